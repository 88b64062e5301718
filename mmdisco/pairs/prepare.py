"""The pairs of a training run, from its config: real pairs encoded and fake pairs sampled once
into ``cache_dir`` (sharded over the processes), returned as Datasets identical on every rank."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from mmdisco.pairs.dsm import DsmTargets, RealWithTargets, precompute_dsm_targets
from mmdisco.pairs.fakes import presample_fakes
from mmdisco.pairs.real import cache_real_latents
from mmdisco.pairs.store import ShardedPairs
from mmdisco.sampling import JointSampler, build_sampler

FAKE_SEED_OFFSET = 10_000  # the fakes' seed is the run's seed + this (never the real stream)


def base_key(cfg: DictConfig) -> dict:
    """The base config that names a store (without keys that do not change the models)."""
    base = OmegaConf.to_container(cfg.base, resolve=True)
    return {k: v for k, v in base.items() if k != "progress"}


def fake_sampler(bases, cfg: DictConfig) -> JointSampler:
    """Fake pairs come from the bare bases with the run's solver settings and one joint step
    (no guidance: the ``guidance`` group does not change them)."""
    return build_sampler(bases, cfg.sampler, joint_num_steps=1)


def real_pairs(data, bases, cfg: DictConfig, accelerator=None, progress: bool = True):
    """The real pairs of ``data`` encoded by ``bases`` into ``<cache_dir>/latents-<hash>``."""
    path = cache_real_latents(
        data, bases, cfg.cache_dir, base_key(cfg), accelerator=accelerator, progress=progress
    )
    return ShardedPairs(path)


def fake_pairs(data, bases, cfg: DictConfig, accelerator=None, device="cpu", progress=True):
    """``fake.num_pairs`` pairs sampled independently from the bases, prompts drawn from the
    data's captions, into ``<cache_dir>/fakes-<hash>``."""
    path = presample_fakes(
        bases,
        data.captions,
        cfg.fake.num_pairs,
        cfg.cache_dir,
        seed=cfg.seed + FAKE_SEED_OFFSET,
        sampler=fake_sampler(bases, cfg),
        shard_size=cfg.fake.shard_size,
        batch_size=cfg.fake.batch_size,
        seeding=cfg.fake.seeding,
        base_config=base_key(cfg),
        accelerator=accelerator,
        device=device,
        progress=progress,
    )
    return ShardedPairs(path)


def real_pairs_with_targets(real, bases, loss, draws: int, cfg: DictConfig, accelerator=None,
                            device="cpu", progress=True) -> RealWithTargets:  # fmt: skip
    """``real`` joined with K = ``draws`` precomputed L_DSM targets per pair
    (``train.dsm_draws``), computed once into ``<cache_dir>/dsm-<hash>`` (``mmdisco.pairs.dsm``)
    with the run's seed, ``fake.batch_size`` (pair, draw) items per base forward and
    ``train.mixed_precision``."""
    path = precompute_dsm_targets(
        real,
        bases,
        loss,
        draws,
        cfg.cache_dir,
        seed=cfg.seed,
        batch_size=cfg.fake.batch_size,
        mixed_precision=cfg.train.mixed_precision,
        accelerator=accelerator,
        device=device,
        progress=progress,
    )
    return RealWithTargets(real, DsmTargets(path))
