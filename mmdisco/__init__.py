"""mmdisco: MMDisCo (ICLR 2025) — a discriminator that makes two single-modality diffusion
models generate aligned audio-video pairs together."""

from mmdisco.bases import Condition, DiffusionBase, IndependentBases, JointBase, JointNoiseModel
from mmdisco.guidance import JointGuidance, residual
from mmdisco.loss import JointLoss
from mmdisco.sampling import JointSampler
from mmdisco.schedule import NoiseSchedule

__all__ = [
    "Condition",
    "DiffusionBase",
    "IndependentBases",
    "JointBase",
    "JointGuidance",
    "JointLoss",
    "JointNoiseModel",
    "JointSampler",
    "NoiseSchedule",
    "residual",
]
__version__ = "0.1.0"
