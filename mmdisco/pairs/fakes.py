"""Fake pairs pre-sampled once from the independent base models (paper Sec. 3.3: 1K pairs
in-domain, 10K out-of-domain), in the pair store (``mmdisco.pairs.store``) like the real pairs.

Each pair is drawn by :class:`~mmdisco.sampling.JointSampler` without a discriminator (the
modalities independent), with a prompt drawn from the data set's captions; text-conditional
bases sample with their own classifier-free guidance (``encode_prompt``), unconditional ones
ignore the prompt.

Resumable and rank-independent: shard s holds pairs [s S, (s+1) S); its prompts come from a
generator seeded with (seed, s) and pair i's noise from its own generator seeded with
(seed, i) (``randn`` with one generator per sample), so a shard's bytes depend only on the
seed, the shard index and the settings. A killed run continues at the next missing shard;
1 rank and W ranks, interrupted or not, write identical files.

``seeding="per_batch"`` draws instead the whole of batch j (pairs [j B, (j+1) B), B the batch
size) from one generator seeded with ``seed + j``, as the toy has always been sampled (its
Table 1 numbers come from that draw); a shard then holds whole batches (the shard size is
rounded up to a multiple of the batch size). Per-pair seeding is the default: a pair's noise
does not depend on the batch it was sampled in.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmdisco.hashing import config_hash
from mmdisco.pairs.prompts import batch_conditions, prompt_tables
from mmdisco.pairs.real import bases_key
from mmdisco.pairs.store import CACHE_VERSION, build_shards
from mmdisco.sampling import JointSampler

PROMPT_STREAM, NOISE_STREAM = 0, 1  # SeedSequence spawn keys: prompts and noise never overlap
SEEDINGS = ("per_pair", "per_batch")


def sample_seed(seed: int, index: int) -> int:
    """The noise seed of pair ``index`` (a 63-bit integer from SeedSequence([seed, 1, index]))."""
    state = np.random.SeedSequence([seed, NOISE_STREAM, index]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def shard_prompts(captions: list[str], seed: int, shard: int, n: int) -> list[str]:
    """n prompts drawn uniformly (with replacement) from ``captions`` by the (seed, shard)
    generator; ``[""] * n`` without captions (unconditional sampling)."""
    if not captions:
        return [""] * n
    rng = np.random.default_rng([seed, PROMPT_STREAM, shard])
    return [captions[i] for i in rng.integers(len(captions), size=n)]


def fakes_key(
    bases, captions, num_pairs, seed, sampler, shard_size, batch_size, base_config,
    seeding="per_pair",
) -> dict:
    """What the fakes depend on: the bases, the prompts, the seed, the solver settings and
    the batching -- not the guidance (fakes are sampled without D)."""
    return {
        "kind": "fakes",
        "version": CACHE_VERSION,
        "bases": bases_key(bases, base_config),
        "captions_sha256": hashlib.sha256("\n".join(captions).encode()).hexdigest(),
        "num_pairs": num_pairs,
        "seed": seed,
        "sampler": sampler.solver_settings,
        "shard_size": shard_size,
        "batch_size": batch_size,  # the networks' float results may depend on the batch
        # per_pair stores keep the key (and directory) they had before the option existed
        **({"seeding": seeding} if seeding != "per_pair" else {}),
    }


def presample_fakes(
    bases,
    captions: list[str] | None,
    num_pairs: int,
    cache_dir: str | os.PathLike,
    seed: int = 0,
    sampler: JointSampler | None = None,
    shard_size: int = 250,
    batch_size: int = 50,
    base_config: Any = None,
    rank: int = 0,
    world_size: int = 1,
    accelerator=None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    seeding: str = "per_pair",
) -> Path:
    """Sample ``num_pairs`` independent pairs into ``<cache_dir>/fakes-<hash>``; return it.

    ``bases``: a :class:`~mmdisco.bases.protocol.JointBase` (e.g. ``IndependentBases``);
    ``captions``: the prompts to draw from (e.g. ``data.captions``; None or [] samples with the
    empty prompt); ``sampler``: a :class:`JointSampler` over the bare ``bases`` with one joint step
    (default: ``JointSampler(bases)``); ``base_config``: the resolved base config for the hash
    (None: the weights' fingerprint). Read the result with
    :class:`~mmdisco.pairs.store.ShardedPairs`: latents, the prompt of each pair as its caption, and
    the conds / pooled vectors it was sampled with. ``seeding``: ``per_pair`` (default) or
    ``per_batch`` (the toy's historic draw; see the module docstring).
    """
    if num_pairs < 1 or shard_size < 1 or batch_size < 1:
        raise ValueError(
            f"num_pairs, shard_size and batch_size must be >= 1, got "
            f"{num_pairs}, {shard_size}, {batch_size}"
        )
    if seeding not in SEEDINGS:
        raise ValueError(f"fake.seeding must be one of {SEEDINGS}, got {seeding!r}")
    if seeding == "per_batch":  # a shard holds whole batches: round its size up
        shard_size = -(-shard_size // batch_size) * batch_size
    captions = [str(c) for c in (captions or [])]
    sampler = JointSampler(bases) if sampler is None else sampler
    if sampler.noise_model is not bases or sampler.joint_num_steps != 1:
        raise ValueError(
            "fake pairs are sampled from the bare bases with one joint step: pass "
            "JointSampler(bases, ..., joint_num_steps=1) (no guidance, no re-noise recurrence)"
        )
    key = fakes_key(
        bases, captions, num_pairs, seed, sampler, shard_size, batch_size, base_config, seeding
    )
    out_dir = Path(cache_dir) / f"fakes-{config_hash(key)}"

    def make_shard(s: int):
        first, last = s * shard_size, min(num_pairs, (s + 1) * shard_size)
        prompts = shard_prompts(captions, seed, s, last - first)
        return _sample_shard(sampler, bases, prompts, first, seed, batch_size, device, seeding)

    num_shards = -(-num_pairs // shard_size)
    return build_shards(
        out_dir,
        key,
        num_shards,
        make_shard,
        rank,
        world_size,
        accelerator,
        progress,
        desc="sample fake pairs",
    )


@torch.no_grad()
def _sample_shard(
    sampler, bases, prompts, first, seed, batch_size, device, seeding="per_pair"
) -> tuple[dict, dict]:
    """Pairs first .. first + len(prompts) - 1 in batches; tensors on the CPU + metadata."""
    tables, caption_index, _ = prompt_tables(bases, prompts)
    outs: dict[str, list[Tensor]] = {m: [] for m in bases.names}
    for b in range(0, len(prompts), batch_size):
        rows = caption_index[b : b + batch_size]
        if seeding == "per_batch":  # batch j = (first + b) / batch_size of the whole set
            gens = torch.Generator(device).manual_seed(seed + (first + b) // batch_size)
        else:
            gens = [
                torch.Generator(device).manual_seed(sample_seed(seed, first + i))
                for i in range(b, b + len(rows))
            ]
        conds = batch_conditions(bases, {k: v[rows] for k, v in tables.items()})
        xs = sampler.sample(len(rows), conds=conds, generator=gens, device=device)
        for m in bases.names:
            outs[m].append(xs[m].detach().cpu())
    tensors = {m: torch.cat(v) for m, v in outs.items()}
    tensors.update(tables, caption_index=caption_index)
    meta = {
        "count": len(prompts),
        "captions": prompts,
        "first": first,
        "conditional": [m for m in bases.names if f"{m}_cond" in tables],
    }
    return tensors, meta
