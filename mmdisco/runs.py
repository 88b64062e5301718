"""Glue shared by the scripts: devices, a run directory's contents, guidance from its config,
sampling in seeded batches."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm.auto import tqdm

from mmdisco.config import upgrade_run_config
from mmdisco.guidance import JointGuidance, check_joint_scales
from mmdisco.io import load_module
from mmdisco.pretrained import local_path
from mmdisco.sampling import JointSampler

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "discriminator.safetensors"


def setup_torch(device: str = "auto", threads: int | None = None) -> torch.device:
    if threads:
        torch.set_num_threads(int(threads))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def resolve_joint_scales(value, run_dir: str | Path | None = None):
    """``guidance.joint_scales`` -> what :class:`JointGuidance` takes: a float (every modality)
    or ``{modality: float or [float per bucket of t]}``. The one place a configured scale is
    interpreted: ``"auto"`` reads the scales train.py computed from held-out real pairs
    (``run_dir/joint_scales.json``, :mod:`mmdisco.calibration`); None is 1.0 (the paper's)."""
    if value is None:
        return 1.0
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(
                f"guidance.joint_scales must be a number, {{audio: .., video: ..}} or auto, "
                f"got {value!r}"
            )
        if run_dir is None:
            raise ValueError("joint_scales=auto needs the training run's directory (run_dir)")
        from mmdisco.calibration import SCALES_FILE, load_joint_scales

        return load_joint_scales(Path(run_dir) / SCALES_FILE)
    if isinstance(value, Mapping):  # per modality: a float or a list over buckets of t
        return check_joint_scales({str(m): s for m, s in value.items()})
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(
        f"guidance.joint_scales must be a number, a mapping {{audio: .., video: ..}} or auto, "
        f"got {value!r}"
    )


def build_guidance(bases, discriminator, guidance_cfg, run_dir: str | Path | None = None):
    """The guided joint noise model of the ``guidance`` config group (paper Eq. 11-12)."""
    scales = resolve_joint_scales(guidance_cfg.joint_scales, run_dir)
    return JointGuidance(bases, discriminator, scales, bool(guidance_cfg.discriminator_cfg))


def with_overrides(saved, overrides) -> DictConfig:
    """A run's saved config group with the non-null keys of ``overrides`` on top."""
    given = {k: v for k, v in OmegaConf.to_container(overrides).items() if v is not None}
    return OmegaConf.merge(saved, given)


def sampling_prompts(bases, data, prompts, num: int, seed: int) -> list[str] | None:
    """One prompt per sample for text-conditional bases: ``prompts`` cycled, or (None) drawn
    with a seeded generator from the data set's captions; None for unconditional bases."""
    if not bases.text_conditional:
        if prompts:
            raise ValueError("these base models take no prompt: leave prompts=null")
        return None
    if prompts:
        prompts = [str(p) for p in prompts]
        return [prompts[i % len(prompts)] for i in range(num)]
    captions = list(data.captions)
    if not captions:
        raise ValueError(
            "text-conditional base models need prompts: pass prompts=['a dog barking', ...] "
            "(the run's data set has no captions to draw from)"
        )
    rng = np.random.default_rng(seed)
    return [captions[i] for i in rng.integers(len(captions), size=num)]


def sample_in_batches(
    sampler: JointSampler,
    bases,
    num: int,
    batch_size: int,
    seed: int,
    device,
    progress=True,
    prompts: list[str] | None = None,
):
    """``num`` samples; batch i uses the generator seeded with seed + i (a seed names an output).
    ``prompts`` (one per sample) condition every base through its ``encode_prompt``."""
    outs: dict[str, list[torch.Tensor]] = {}
    starts = range(0, num, batch_size)
    for i, start in enumerate(tqdm(starts, disable=not progress, desc="batches")):
        gen = torch.Generator(device).manual_seed(seed + i)
        n = min(batch_size, num - start)
        conds = None
        if prompts is not None:
            batch = prompts[start : start + n]
            conds = bases.encode_prompt(batch)
        xs = sampler.sample(n, conds=conds, generator=gen, device=device, progress=progress)
        for m, x in xs.items():
            outs.setdefault(m, []).append(x.detach().cpu())
    return {m: torch.cat(v) for m, v in outs.items()}


@dataclass
class Run:
    cfg: DictConfig
    bases: object
    data: object
    discriminator: torch.nn.Module | None


def load_run(run_dir: str | Path, device="cpu", with_discriminator: bool = True) -> Run:
    """Rebuild the bases, data and trained discriminator of a training run (a directory with
    ``config.yaml`` and ``discriminator.safetensors``, e.g. ``assets/synthetic/discriminator``;
    relative paths are also tried from the repository root)."""
    run_dir = local_path(run_dir)
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.exists():
        raise FileNotFoundError(
            f"{cfg_path} not found: {run_dir} is not a training run. "
            f"Train one with `python scripts/train.py run_dir={run_dir} ...`."
        )
    cfg = upgrade_run_config(OmegaConf.load(cfg_path))
    bases = instantiate(cfg.base).to(device)
    data = instantiate(cfg.data)
    disc = None
    if with_discriminator:
        weights = run_dir / WEIGHTS_FILE
        if not weights.exists():
            raise FileNotFoundError(
                f"{weights} not found: training in {run_dir} has not finished. "
                f"Resume it with `python scripts/train.py run_dir={run_dir}` (same overrides)."
            )
        disc = load_module(weights, instantiate(cfg.discriminator)).to(device).eval()
    return Run(cfg, bases, data, disc)
