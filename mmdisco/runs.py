"""Glue shared by the scripts: devices, a run directory's contents, fake-pair pre-sampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mmdisco.faults import discard_if_damaged
from mmdisco.io import load_module, load_tensors, save_tensors
from mmdisco.sampling import JointSampler

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "discriminator.safetensors"


def setup_torch(device: str = "auto", threads: int | None = None) -> torch.device:
    if threads:
        torch.set_num_threads(int(threads))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def fake_sampler_kwargs(sampler_cfg) -> dict:
    """The sampler settings for fake pairs: the run's sampler without the re-noise recurrence
    (``joint_num_steps`` only matters with a discriminator; without one it would only repeat
    each step's work)."""
    return {**sampler_kwargs(sampler_cfg), "joint_num_steps": 1}


def sampler_kwargs(sampler_cfg) -> dict:
    """Sampler config -> JointSampler keyword arguments (drops Hydra keys and nulls)."""
    cfg = (
        OmegaConf.to_container(sampler_cfg, resolve=True)
        if isinstance(sampler_cfg, DictConfig)
        else dict(sampler_cfg)
    )
    return {k: v for k, v in cfg.items() if not k.startswith("_") and v is not None}


def text_conditional(bases) -> bool:
    """Whether every base of the pair takes a prompt (``encode_prompt``)."""
    try:
        for m in bases.names:
            bases[m].encode_prompt([""])
    except NotImplementedError:
        return False
    return True


def sampling_prompts(bases, data, prompts, num: int, seed: int) -> list[str] | None:
    """One prompt per sample for text-conditional bases: ``prompts`` cycled, or (None) drawn
    with a seeded generator from the data set's captions; None for unconditional bases."""
    if not text_conditional(bases):
        if prompts:
            raise ValueError("these base models take no prompt: leave prompts=null")
        return None
    if prompts:
        prompts = [str(p) for p in prompts]
        return [prompts[i % len(prompts)] for i in range(num)]
    captions = list(getattr(data, "captions", None) or [])
    if not captions:
        raise ValueError(
            "text-conditional base models need prompts: pass prompts=['a dog barking', ...] "
            "(the run's data set has no captions to draw from)"
        )
    rng = np.random.default_rng(seed)
    return [captions[i] for i in rng.integers(len(captions), size=num)]


def sample_in_batches(
    sampler: JointSampler,
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
            conds = {m: sampler.bases[m].encode_prompt(batch) for m in sampler.bases.names}
        xs = sampler.sample(n, conds=conds, generator=gen, device=device, progress=progress)
        for m, x in xs.items():
            outs.setdefault(m, []).append(x.detach().cpu())
    return {m: torch.cat(v) for m, v in outs.items()}


def fake_pairs(bases, fake_cfg, sampler_cfg, path: Path, seed: int, device, progress=True):
    """Pairs sampled independently from the bases, once; cached in ``path`` (safetensors)."""
    discard_if_damaged(path)  # torn from outside: sampled again below
    if path.exists():
        return load_tensors(path)
    sampler = JointSampler(bases, None, **fake_sampler_kwargs(sampler_cfg))
    pairs = sample_in_batches(
        sampler, fake_cfg.num_pairs, fake_cfg.batch_size, seed, device, progress
    )
    save_tensors(path, pairs)
    return pairs


@dataclass
class Run:
    cfg: DictConfig
    bases: object
    data: object
    discriminator: torch.nn.Module | None


def load_run(run_dir: str | Path, device="cpu", with_discriminator: bool = True) -> Run:
    """Rebuild the bases, data and trained discriminator of a training run."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.exists():
        raise FileNotFoundError(
            f"{cfg_path} not found: {run_dir} is not a training run. "
            f"Train one with `python scripts/train.py run_dir={run_dir} ...`."
        )
    cfg = OmegaConf.load(cfg_path)
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
