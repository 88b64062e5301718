"""Base models behind one protocol: single-modality wrappers and the joint view."""

from mmdisco.bases.protocol import (
    Condition,
    DiffusionBase,
    IndependentBases,
    JointNoiseModel,
)

__all__ = ["Condition", "DiffusionBase", "IndependentBases", "JointNoiseModel"]
