"""Real pairs encoded once by the bases' codecs into the pair store (``latents-<hash>``).

The data set gives decoded clips (a Dataset of ``{"audio", "video", "caption", "path",
"index"}`` samples or ``Skipped`` records, see ``mmdisco.data``); the bases encode them
(``JointBase.encode``: the identity for data-space bases such as the toy). The hash names the
bases (their resolved config, else their weights) and the data set (``data.cache_key()``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from mmdisco.data.folder import collate_clips
from mmdisco.faults import repair_cache
from mmdisco.hashing import config_hash, plain
from mmdisco.pairs.prompts import prompt_tables
from mmdisco.pairs.store import CACHE_VERSION, INDEX_FILE, build_shards


def bases_key(bases, base_config: Any = None) -> Any:
    """What identifies the bases in a cache key: the resolved base config (e.g. Hydra's
    ``cfg.base``) when given, else a fingerprint of every modality's weights (exact, but it
    reads all weights: seconds for GB-sized models)."""
    if base_config is not None:
        return {"config": plain(base_config)}
    return bases.cache_key()


def real_cache_dir(data, bases, cache_dir: str | os.PathLike, base_config: Any = None) -> Path:
    """``<cache_dir>/latents-<hash>`` for these bases and this (bound) data set."""
    data.for_media_format(bases.media_format())
    return Path(cache_dir) / f"latents-{config_hash(_real_key(data, bases, base_config))}"


def _real_key(data, bases, base_config) -> dict:
    return {
        "kind": "real",
        "version": CACHE_VERSION,
        "bases": bases_key(bases, base_config),
        "data": data.cache_key(),
    }


def cache_real_latents(
    data,
    bases,
    cache_dir: str | os.PathLike,
    base_config: Any = None,
    shard_size: int = 256,
    batch_size: int = 16,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    accelerator=None,
    progress: bool = True,
) -> Path:
    """Encode every readable clip of ``data`` once; return the cache directory.

    ``data``: a pair source (``mmdisco.data.source.PairSource``: PairedVideoFolder, SyntheticPairs,
    ToyPairs); ``bases``: a :class:`~mmdisco.bases.protocol.JointBase` (``encode`` on the pair's
    dict, ``encode_prompt`` for the captions of text-conditional bases). Clips [s S, (s+1) S) form
    shard s; skipped clips are left out and listed. With several ranks the index is written by the
    last one to finish: read the cache after every rank returns (or pass ``accelerator``, which
    synchronises). A second call with the same bases and data returns at once.
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
    out_dir = real_cache_dir(data, bases, cache_dir, base_config)
    repair_cache(out_dir)  # damaged shards (from outside) are deleted and rebuilt
    if (out_dir / INDEX_FILE).exists():
        _note_cached_skips(data, out_dir)
        return out_dir
    key = _real_key(data, bases, base_config)
    num_shards = -(-len(data) // shard_size)

    def make_shard(s: int):
        indices = list(range(s * shard_size, min(len(data), (s + 1) * shard_size)))
        return _encode_shard(data, bases, indices, batch_size, num_workers)

    build_shards(
        out_dir,
        key,
        num_shards,
        make_shard,
        rank,
        world_size,
        accelerator,
        progress,
        desc="encode real pairs",
    )
    if (out_dir / INDEX_FILE).exists():
        _note_cached_skips(data, out_dir)
        data.report()
    return out_dir


def _note_cached_skips(data, out_dir: Path) -> None:
    skipped = json.loads((out_dir / INDEX_FILE).read_text())["skipped"]
    data.note_skipped([tuple(s) for s in skipped])


@torch.no_grad()
def _encode_shard(data, bases, indices, batch_size, num_workers) -> tuple[dict, dict]:
    loader = DataLoader(
        Subset(data, indices),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_clips,
    )
    latents: dict[str, list[Tensor]] = {m: [] for m in bases.names}
    captions, paths, skipped = [], [], []
    for batch in loader:
        data.note_skipped(batch["skipped"])
        skipped += [list(s) for s in batch["skipped"]]
        if not batch["caption"]:
            continue
        for m, z in bases.encode({m: batch[m] for m in bases.names}).items():
            latents[m].append(z.detach().cpu())
        captions += batch["caption"]
        paths += batch["path"]
    tensors = {m: torch.cat(v) for m, v in latents.items() if v}
    conditional = list(bases.conditional_names)
    if captions:
        tables, caption_index, _ = prompt_tables(bases, captions)
        tensors.update(tables, caption_index=caption_index)
    meta = {
        "count": len(captions),
        "captions": captions,
        "paths": paths,
        "skipped": skipped,
        "conditional": conditional,
    }
    return tensors, meta
