"""The toy base of the paper (Sec. 4.1, Table 5): a 1-D diffusion MLP trained on a 1-D GMM.

Saved like a diffusers pipeline: ``denoiser/`` (config + safetensors) and ``scheduler/``
(a DDPMScheduler config), loaded back through ``from_pretrained``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import ConfigMixin, DDPMScheduler, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor

from mmdisco.bases.protocol import DiffusionBase, IndependentBases
from mmdisco.bases.training import train_denoiser
from mmdisco.data.toy import GaussianMixture
from mmdisco.hashing import config_hash
from mmdisco.io import atomic_write_json
from mmdisco.nn import AdaptiveMLP
from mmdisco.pretrained import resolve_pretrained
from mmdisco.schedule import NoiseSchedule

REQUIRED_FILES = (
    "denoiser/config.json",
    "denoiser/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
)


class ToyDenoiser(ModelMixin, ConfigMixin):
    """MLP (16, 64, 256, 64, 16) with LayerNorm, SiLU and adaptive timestep input."""

    @register_to_config
    def __init__(
        self, dim: int = 1, hidden: tuple[int, ...] = (16, 64, 256, 64, 16), time_dim: int = 256
    ):
        super().__init__()
        self.net = AdaptiveMLP(dim, list(hidden), dim, time_dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(x, t)


class ToyBase(DiffusionBase):
    """A data-space base: x (B, 1), no codec, no text."""

    def __init__(self, denoiser: ToyDenoiser, scheduler: DDPMScheduler):
        super().__init__()
        self.denoiser = denoiser
        self.scheduler_config = dict(scheduler.config)
        self.schedule = NoiseSchedule.from_betas(scheduler.betas)
        self.prediction_type = scheduler.config.prediction_type

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ToyBase:
        hint = "Train one with `python scripts/train.py base=toy ...` (it caches the base)."
        path = resolve_pretrained(path, REQUIRED_FILES, hint)
        denoiser = ToyDenoiser.from_pretrained(path / "denoiser")
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        return cls(denoiser, scheduler).eval().requires_grad_(False)

    def save_pretrained(self, path: str | Path) -> None:
        """Written to a temporary directory first, then moved into place."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        self.denoiser.save_pretrained(tmp / "denoiser")
        DDPMScheduler.from_config(self.scheduler_config).save_pretrained(tmp / "scheduler")
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)

    def model_output(self, x_t, t, emb):
        return self.denoiser(x_t, t)

    def sample_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, self.denoiser.config.dim)


def train_toy_base(
    peaks,
    std,
    num_samples,
    hidden,
    time_dim,
    num_train_timesteps,
    beta_start,
    beta_end,
    train_steps,
    batch_size,
    lr,
    seed,
    progress=True,
) -> ToyBase:
    """Train the 1-D base on ``num_samples`` draws of the 1-D mixture (paper: 500)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data = GaussianMixture(peaks, std).sample(num_samples, gen)
    scheduler = DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=beta_start,
        beta_end=beta_end,
        beta_schedule="linear",
        clip_sample=False,
        prediction_type="epsilon",
    )
    base = ToyBase(ToyDenoiser(1, tuple(hidden), time_dim), scheduler)
    train_denoiser(base, data, train_steps, batch_size, lr, gen, progress)
    return base.requires_grad_(False)


def toy_bases(
    cache_dir: str, pretrained: str | None = None, progress: bool = True, **cfg
) -> IndependentBases:
    """The toy joint model: ONE 1-D base used for both coordinates (audio, video).

    With ``pretrained`` it is loaded; otherwise it is trained once and cached under
    ``cache_dir/toy-<hash of its config>``.
    """
    if pretrained is None:
        pretrained = Path(cache_dir) / f"toy-{config_hash(cfg, digits=12)}"
        if not pretrained.exists():
            base = train_toy_base(**cfg, progress=progress)
            base.save_pretrained(pretrained)
            atomic_write_json(pretrained / "train_config.json", cfg)
    base = ToyBase.from_pretrained(pretrained)
    return IndependentBases(audio=base, video=base)
