"""mmdisco: MMDisCo (ICLR 2025) — a discriminator that makes two single-modality diffusion
models generate aligned audio-video pairs together."""

from mmdisco.bases import Condition, DiffusionBase, IndependentBases
from mmdisco.guidance import JointGuidance, residual
from mmdisco.loss import JointLoss
from mmdisco.sampling import JointSampler
from mmdisco.schedule import NoiseSchedule

__all__ = [
    "Condition",
    "DiffusionBase",
    "IndependentBases",
    "JointGuidance",
    "JointLoss",
    "JointSampler",
    "NoiseSchedule",
    "residual",
]
__version__ = "0.1.0"
