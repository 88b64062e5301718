"""Precomputed L_DSM targets (``train.dsm_draws=K``): the bases run once per real pair and draw,
not on every discriminator step.

L_DSM's target on a real pair is the frozen bases' noise prediction eps_m(m_t, t, c) at a drawn
step t and noise (and, for text-conditional bases, the prompt or the empty one: ``loss.
cond_dropout``). None of it depends on D, so for every real pair i of the real store this
computes K draws once and keeps, per draw k:

- ``t`` (N, K): the step, from ``loss.t_power``'s law (``JointLoss.draw_t``);
- ``keep`` (N, K) bool, only with conditions and ``loss.cond_dropout > 0``: whether the prompt
  is kept (False: the base and D see the empty prompt, as in live CFG training);
- ``noise_seed`` (N, K) int64: the noise is NOT stored; it is regenerated on the CPU as
  ``torch.randn(shape, generator=torch.Generator().manual_seed(noise_seed))`` per modality,
  audio first (:func:`draw_noise`), which halves the store and costs one randn per pair read;
- ``eps_{m}`` (N, K, ...) float32: the bases' prediction on ``m_t = alpha_t m_0 + sigma_t noise``.

The draws of pair i come from ``step_generator(seed, DSM_DRAW_STREAM, i)`` (t, then keep, then
the K noise seeds), so they depend on the pair's index in the real store and the run's seed, not
on the batching or the number of processes. A D step takes the same real pairs as without
precomputed targets and, for each, one of its K draws (uniform, ``DSM_PICK_STREAM``, see
``mmdisco.seeds.StepIndicesWithDraws``); its fake pairs are drawn as before. L_D on real pairs
uses the same draw, so the real pair's x_t, the prompt D sees and the target agree.

Layout: ``<cache_dir>/dsm-<hash>``, the pair-store layout (``mmdisco.pairs.store``): shard s
holds the draws of real shard s's pairs, written atomically, resumable, rank-independent,
index.json last. The hash covers what changes the targets: the real store (its own hash names
the bases and the data), K, the t law (``t_power``, T), ``cond_dropout`` when there are
conditions, the seed, the batch the bases ran at and the precision (``train.mixed_precision``:
the bases' forward runs under the same autocast as a live D step would). Size: N K (numel(audio)
+ numel(video)) float32 values, e.g. 1000 synthetic pairs x K = 8: 330 MB.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmdisco.bases.protocol import MODALITIES
from mmdisco.hashing import config_hash
from mmdisco.loss import JointLoss, apply_keep, contrastive_on
from mmdisco.pairs.prompts import batch_conditions
from mmdisco.pairs.store import CACHE_VERSION, ShardedPairs, build_shards, collate_pairs
from mmdisco.seeds import DSM_DRAW_STREAM, step_generator

NOISE_SEED_MAX = 2**62  # noise seeds are drawn in [0, 2^62)


def check_dsm_draws(draws: Any, loss: JointLoss) -> int | None:
    """``train.dsm_draws``: None (a fresh draw and a live base forward every D step, the
    default) or an integer K >= 1 (with L_DSM on)."""
    if draws is None:
        return None
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(
            f"train.dsm_draws must be an integer >= 1 (precomputed (t, noise) draws per real "
            f"pair, e.g. 8) or null (live base forward every step), got {draws!r}"
        )
    if loss.lambda_dsm <= 0:
        raise ValueError(
            "train.dsm_draws precomputes L_DSM targets, but loss.lambda_dsm=0 has no L_DSM: "
            "set train.dsm_draws=null"
        )
    if contrastive_on(loss.contrastive):
        raise ValueError(
            "train.dsm_draws stores one (t, noise) draw per real pair, but loss.contrastive "
            "needs one t shared by each group of real pairs: set loss.contrastive=null or "
            "train.dsm_draws=null"
        )
    return int(draws)


def pair_draws(
    loss: JointLoss, seed: int, index: int, draws: int, num_train_timesteps: int, dropout: bool
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The K draws of real pair ``index``: t (K,), keep (K,) bool or None, noise seeds (K,)."""
    g = step_generator(seed, DSM_DRAW_STREAM, index)
    t = loss.draw_t(draws, num_train_timesteps, g)
    keep = torch.rand(draws, generator=g) >= loss.cond_dropout if dropout else None
    seeds = torch.randint(0, NOISE_SEED_MAX, (draws,), generator=g)
    return t, keep, seeds


def draw_noise(noise_seed: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """The noise of one draw (one pair, no batch axis), per modality in MODALITIES order."""
    g = torch.Generator().manual_seed(int(noise_seed))
    return {m: torch.randn(shapes[m], generator=g) for m in MODALITIES}


def dsm_key(real, loss, draws, seed, conditional, batch_size, mixed_precision, num_t) -> dict:
    return {
        "kind": "dsm_targets",
        "version": CACHE_VERSION,
        "real": real.index["hash"],
        "draws": draws,
        "t_power": loss.t_power,
        "num_train_timesteps": num_t,
        "cond_dropout": loss.cond_dropout if conditional else None,
        "seed": seed,
        "batch_size": batch_size,  # the networks' float results may depend on the batch
        "mixed_precision": mixed_precision,
    }


def _conditions(bases, batch):
    if not any(k.endswith(("_cond", "_pooled")) for k in batch):  # as mmdisco.training
        return None
    conds = batch_conditions(bases, batch)
    return conds if any(c is not None for c in conds.values()) else None


def precompute_dsm_targets(
    real: ShardedPairs,
    bases,
    loss: JointLoss,
    draws: int,
    cache_dir: str | os.PathLike,
    seed: int = 0,
    batch_size: int = 64,
    mixed_precision: str = "no",
    accelerator=None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> Path:
    """Compute (or find) the K = ``draws`` L_DSM targets of every pair of ``real`` into
    ``<cache_dir>/dsm-<hash>``; return it. ``batch_size``: (pair, draw) items per base forward;
    ``mixed_precision`` names the autocast the forward runs under (``accelerator.autocast()``
    when an accelerator is given; without one it must be "no")."""
    if not isinstance(draws, int) or isinstance(draws, bool) or draws < 1:
        raise ValueError(f"draws must be an integer >= 1, got {draws!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if accelerator is None and mixed_precision != "no":
        raise ValueError("mixed_precision other than 'no' needs the run's accelerator")
    num_t = bases.schedules[bases.names[0]].num_train_timesteps
    conditional = bool(real.index.get("conditional"))  # the text-conditional modalities
    dropout = conditional and loss.cond_dropout > 0
    key = dsm_key(real, loss, draws, seed, conditional, batch_size, mixed_precision, num_t)
    out_dir = Path(cache_dir) / f"dsm-{config_hash(key)}"

    def make_shard(s: int):
        first, last = real.offsets[s], real.offsets[s + 1]
        return _targets_shard(
            real, bases, loss, range(first, last), draws, seed, num_t, dropout, batch_size,
            accelerator, device,
        )  # fmt: skip

    return build_shards(
        out_dir,
        key,
        len(real.counts),
        make_shard,
        rank,
        world_size,
        accelerator,
        progress,
        desc=f"L_DSM targets (K={draws})",
    )


@torch.no_grad()
def _targets_shard(
    real, bases, loss, indices, draws, seed, num_t, dropout, batch_size, accelerator, device
) -> tuple[dict, dict]:
    n = len(indices)
    meta = {"count": n, "captions": [], "first": indices.start, "conditional": []}
    if n == 0:
        return {}, meta
    per_pair = [pair_draws(loss, seed, i, draws, num_t, dropout) for i in indices]
    t = torch.stack([d[0] for d in per_pair])  # (n, K)
    noise_seed = torch.stack([d[2] for d in per_pair])
    keep = torch.stack([d[1] for d in per_pair]) if dropout else None
    items = [(j, k) for j in range(n) for k in range(draws)]  # pair-major
    eps: dict[str, list[Tensor]] = {m: [] for m in MODALITIES}
    for b in range(0, len(items), batch_size):
        chunk = items[b : b + batch_size]
        samples = [real[indices[j]] for j, _ in chunk]
        batch = collate_pairs(samples)
        shapes = {m: tuple(batch[m].shape[1:]) for m in MODALITIES}
        noises = [draw_noise(int(noise_seed[j, k]), shapes) for j, k in chunk]
        noise = {m: torch.stack([x[m] for x in noises]).to(device) for m in MODALITIES}
        tt = torch.stack([t[j, k] for j, k in chunk]).to(device)
        kk = None if keep is None else torch.stack([keep[j, k] for j, k in chunk]).to(device)
        conds = apply_keep(_conditions(bases, batch), kk)
        x0 = {m: batch[m].to(device) for m in MODALITIES}
        xt = loss.noised(bases, x0, tt, noise)
        with accelerator.autocast() if accelerator is not None else contextlib.nullcontext():
            out = loss.base_noise(bases, xt, tt, conds)
        for m in MODALITIES:
            eps[m].append(out[m].cpu())
    tensors = {"t": t, "noise_seed": noise_seed}
    if keep is not None:
        tensors["keep"] = keep
    for m in MODALITIES:
        e = torch.cat(eps[m])
        tensors[f"eps_{m}"] = e.reshape(n, draws, *e.shape[1:]).contiguous()
    return tensors, meta


class DsmTargets(ShardedPairs):
    """A finished target store: ``targets[(index, k)]`` -> ``{"dsm_t": (), "dsm_keep": ()
    (conditional runs with dropout), "dsm_eps_audio": (...), "dsm_eps_video": (...),
    "dsm_noise_seed": ()}`` for draw k of real pair ``index``."""

    def __init__(self, path: str | os.PathLike, max_open_shards: int = 8):
        super().__init__(path, max_open_shards)
        self.draws = int(self.index["key"]["draws"])
        self._keys: dict[int, list[str]] = {}  # the stored names of each shard

    def __getitem__(self, item) -> dict[str, Any]:  # type: ignore[override]
        index, k = item
        if not 0 <= k < self.draws:
            raise IndexError(f"draw {k} out of range for {self.draws} draws per pair")
        s, j = self.locate(index)
        f = self._shard(s)
        names = ("t", "noise_seed", "keep", "eps_audio", "eps_video")
        if s not in self._keys:
            self._keys[s] = [n for n in names if n in set(f.keys())]
        return {f"dsm_{n}": f.get_slice(n)[j : j + 1, k : k + 1][0, 0] for n in self._keys[s]}


class RealWithTargets(Dataset):
    """Real pairs joined with their precomputed L_DSM draws: item ``(index, k)`` is
    ``real[index]`` plus draw k's ``dsm_*`` entries and its noise ``dsm_noise_{m}``."""

    def __init__(self, real: ShardedPairs, targets: DsmTargets):
        if len(real) != len(targets):
            raise ValueError(
                f"{len(targets)} L_DSM targets for {len(real)} real pairs: the target store "
                f"{targets.path} is not of this real store; delete it and rerun"
            )
        self.real, self.targets = real, targets
        self.draws = targets.draws

    def __len__(self) -> int:
        return len(self.real)

    def __getitem__(self, item) -> dict[str, Any]:
        index, k = item
        out = dict(self.real[index])
        out.update(self.targets[(index, k)])
        shapes = {m: tuple(out[m].shape) for m in MODALITIES}
        for m, x in draw_noise(int(out["dsm_noise_seed"]), shapes).items():
            out[f"dsm_noise_{m}"] = x
        return out
