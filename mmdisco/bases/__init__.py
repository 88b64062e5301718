"""Base models behind one protocol: single-modality wrappers and the joint view."""

from mmdisco.bases.protocol import (
    MODALITIES,
    Condition,
    DiffusionBase,
    IndependentBases,
    JointBase,
    JointNoiseModel,
)

__all__ = [
    "MODALITIES",
    "Condition",
    "DiffusionBase",
    "IndependentBases",
    "JointBase",
    "JointNoiseModel",
]
