"""Config checks shared by the scripts: ``train.*`` values, keys that moved to another group,
and old run configs.

``sampler.joint_scales`` and ``sampler.discriminator_cfg`` moved to the ``guidance`` group
(issue 11): the sampler only solves, the guidance is composed by the caller; the
discriminator's ``mlp_hidden`` and ``fusion_*`` keys moved into its ``fusion`` mapping. A
command-line override or a composed config that still uses an old key gets one error naming
the new one; a run directory written before the move is read with its keys moved.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

MIXED_PRECISION = ("no", "bf16", "fp16")
LR_DECAYS = ("cosine",)  # train.lr_decay (null: constant lr)

MOVED_KEYS = {
    "sampler.joint_scales": "guidance.joint_scales",
    "sampler.discriminator_cfg": "guidance.discriminator_cfg",
    "discriminator.mlp_hidden": "discriminator.fusion.mlp_hidden",
    **{
        f"discriminator.fusion_{k}": f"discriminator.fusion.{k}"
        for k in ("dim", "out_dim", "layers", "heads", "head_dim", "max_tokens")
    },
}
EXAMPLES = {"guidance.joint_scales": "{audio: 1.0, video: 8.0}"}
OLD_DEFAULTS = {"guidance.discriminator_cfg": True}  # what runs before the move got implicitly


def moved_key_error(old: str) -> str:
    new = MOVED_KEYS[old]
    example = f" (e.g. {new}={EXAMPLES[new]})" if new in EXAMPLES else ""
    return f"{old} moved to {new}: write {new}=... instead{example}"


def check_overrides(overrides: Iterable[str]) -> None:
    """Raise ValueError for a command-line override (``key=value``, ``+key=``, ``~key``) of a
    moved key."""
    for arg in overrides:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key in MOVED_KEYS:
            raise ValueError(moved_key_error(key))


def exit_on_moved_keys(argv: list[str]) -> None:
    """For the scripts, before Hydra parses ``argv``: one line on stderr and exit status 2."""
    try:
        check_overrides(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def check_no_moved_keys(cfg: DictConfig) -> None:
    """Raise ValueError when a composed config still sets a moved key (e.g. from an own yaml)."""
    for old in MOVED_KEYS:
        if OmegaConf.select(cfg, old, default=None) is not None:
            raise ValueError(moved_key_error(old))


def upgrade_run_config(cfg: DictConfig) -> DictConfig:
    """A saved run config with the moved keys in their new place (runs written before the
    ``guidance`` group existed); newer configs are returned unchanged."""
    with open_dict(cfg):
        for old, new in MOVED_KEYS.items():
            group, key = old.split(".")
            if group not in cfg or not isinstance(cfg[group], DictConfig) or key not in cfg[group]:
                continue
            value = cfg[group].pop(key)
            parent = new.rsplit(".", 1)[0]
            if isinstance(OmegaConf.select(cfg, parent), str):  # e.g. fusion: transformer
                OmegaConf.update(cfg, parent, {"kind": OmegaConf.select(cfg, parent)}, merge=False)
            if OmegaConf.select(cfg, new, default=None) is None:
                OmegaConf.update(cfg, new, value, force_add=True)
        if "guidance" in cfg:
            for key, value in OLD_DEFAULTS.items():
                if OmegaConf.select(cfg, key, default=None) is None:
                    OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def check_train_config(tc, world_size: int = 1) -> None:
    """One clear error per bad ``train.*`` value."""
    if tc.mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"train.mixed_precision must be one of {MIXED_PRECISION}, got {tc.mixed_precision!r}"
        )
    if tc.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("train.mixed_precision=fp16 needs a CUDA device; use bf16 (or no) on CPU")
    for key in ("steps", "batch_size", "log_every", "ckpt_every", "t_buckets"):
        if int(tc[key]) < 1:
            raise ValueError(f"train.{key} must be >= 1, got {tc[key]}")
    if tc.batch_size % world_size:
        raise ValueError(
            f"train.batch_size={tc.batch_size} (the global batch) is not divisible by the "
            f"{world_size} processes: use a multiple of {world_size}"
        )
    if tc.ema_decay is not None and not 0 <= tc.ema_decay < 1:
        raise ValueError(f"train.ema_decay must be in [0, 1) or null (off), got {tc.ema_decay}")
    if tc.get("lr_decay") is not None and tc.lr_decay not in LR_DECAYS:
        raise ValueError(f"train.lr_decay must be null or one of {LR_DECAYS}, got {tc.lr_decay!r}")
    if tc.grad_clip is not None and not tc.grad_clip > 0:
        raise ValueError(f"train.grad_clip must be > 0 or null (off), got {tc.grad_clip}")
    if int(tc.num_workers) < 0:
        raise ValueError(f"train.num_workers must be >= 0, got {tc.num_workers}")
