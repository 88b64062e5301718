"""The pair store: sharded safetensors written once, resumable, read back as a Dataset.

Both kinds of pairs the discriminator is trained on live in one layout (``mmdisco.pairs.real``:
``<cache_dir>/latents-<hash>``, real pairs encoded by the bases' codecs; ``mmdisco.pairs.fakes``:
``<cache_dir>/fakes-<hash>``, pairs pre-sampled from the bare bases)::

    key.json                 what the hash is of (base configs or weights, data config, ...)
    shard-00000.safetensors  latents of pairs [0, S), [S, 2S), ... (S = shard_size)
    ...
    index.json               written last: counts, captions, paths, skipped files

A shard holds ``audio`` (n, ...) and ``video`` (n, ...) latents and, per text-conditional
modality m, a table of the shard's distinct prompts: ``{m}_cond`` (U, ...) and
``{m}_pooled`` (U, D), with ``caption_index`` (n,) naming each sample's row (captions repeat a
lot: VGGSound has 309 labels, and a (77, 768) CLIP embedding per clip would outweigh the
video latent). Its safetensors metadata ``meta`` (JSON) lists captions, paths and skipped files.

Every file is written atomically (temporary name, then rename), so a shard that exists is
complete: a killed run resumes at the next missing shard. Rank r of W writes the shards
s with s % W == r; the last rank to finish (or the main process, with an ``Accelerator``)
writes index.json from the shards' metadata. A shard's content depends only on its inputs and
its index, so 1 rank and W ranks write the same files.
"""

from __future__ import annotations

import bisect
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mmdisco.bases.protocol import MODALITIES
from mmdisco.faults import open_safetensors, repair_cache
from mmdisco.hashing import config_hash, plain
from mmdisco.io import atomic_write_json, save_tensors

CACHE_VERSION = 1
INDEX_FILE = "index.json"
KEY_FILE = "key.json"


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


# -- ranks and shards ----------------------------------------------------------------------
def resolve_ranks(rank: int = 0, world_size: int = 1, accelerator=None) -> tuple[int, int]:
    """(rank, world_size) from an accelerate ``Accelerator`` or plain ints (checked)."""
    if accelerator is not None:
        rank, world_size = accelerator.process_index, accelerator.num_processes
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
    return int(rank), int(world_size)


def build_shards(
    out_dir: Path,
    key: dict,
    num_shards: int,
    make_shard: Callable[[int], tuple[dict[str, Tensor], dict]],
    rank: int = 0,
    world_size: int = 1,
    accelerator=None,
    progress: bool = True,
    desc: str = "shards",
) -> Path:
    """Write this rank's missing shards with ``make_shard(s) -> (tensors, meta)``, then the
    index when every shard exists. Returns ``out_dir``; a finished cache is left untouched."""
    out_dir = Path(out_dir)
    repair_cache(out_dir)  # damaged shards (from outside) are deleted here and rebuilt below
    if (out_dir / INDEX_FILE).exists():
        return out_dir
    rank, world_size = resolve_ranks(rank, world_size, accelerator)
    atomic_write_json(out_dir / KEY_FILE, plain(key))
    todo = [
        s for s in range(rank, num_shards, world_size) if not (out_dir / shard_name(s)).exists()
    ]
    for s in tqdm(todo, desc=f"{desc} (rank {rank}/{world_size})", disable=not progress):
        tensors, meta = make_shard(s)
        save_tensors(out_dir / shard_name(s), tensors, {"meta": json.dumps(meta)})
    if accelerator is not None:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_index(out_dir, key, num_shards)
        accelerator.wait_for_everyone()
    elif all((out_dir / shard_name(s)).exists() for s in range(num_shards)):
        write_index(out_dir, key, num_shards)
    return out_dir


def read_shard_meta(path: Path) -> dict:
    with open_safetensors(path) as f:
        return json.loads(f.metadata()["meta"])


def write_index(out_dir: Path, key: dict, num_shards: int) -> dict:
    """index.json from the shards' metadata (deterministic: any rank may write it)."""
    metas = [read_shard_meta(out_dir / shard_name(s)) for s in range(num_shards)]
    index = {
        "version": CACHE_VERSION,
        "hash": config_hash(key),
        "key": plain(key),
        "num_shards": num_shards,
        "counts": [m["count"] for m in metas],
        "total": sum(m["count"] for m in metas),
        "captions": [c for m in metas for c in m["captions"]],
        "paths": [p for m in metas for p in m.get("paths", [])],
        "skipped": [s for m in metas for s in m.get("skipped", [])],
        "conditional": metas[0]["conditional"] if metas else [],
    }
    atomic_write_json(out_dir / INDEX_FILE, index)
    return index


# -- reading ---------------------------------------------------------------------------------
class ShardedPairs(Dataset):
    """A finished cache (real latents or pre-sampled fakes) as a Dataset of dict samples::

        {"audio": (...), "video": (...), "caption": str,
         "audio_cond": (...), "audio_pooled": (D,), "video_cond": ..., "video_pooled": ...}

    (the cond / pooled keys only for text-conditional bases). Shards are opened lazily
    (memory-mapped by safetensors) and at most ``max_open_shards`` stay open (LRU), so memory
    stays bounded however large the cache; each DataLoader worker opens its own.
    """

    def __init__(self, path: str | os.PathLike, max_open_shards: int = 8):
        self.path = Path(path)
        index_file = self.path / INDEX_FILE
        if not index_file.exists():
            missing = _missing_shards(self.path)
            raise FileNotFoundError(
                f"{index_file} not found: the cache in {self.path} is unfinished "
                f"(missing shards: {missing or 'none, but no rank wrote the index'}); rerun "
                "the caching with every rank (it resumes at the missing shards)"
            )
        self.index = json.loads(index_file.read_text())
        self.counts = self.index["counts"]
        self.offsets = [0]
        for n in self.counts:
            self.offsets.append(self.offsets[-1] + n)
        self.captions: list[str] = self.index["captions"]
        self.max_open_shards = max(1, int(max_open_shards))
        self._open: OrderedDict[int, Any] = OrderedDict()

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getstate__(self):  # DataLoader workers: no open handles across processes
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        return state

    def _shard(self, s: int):
        if s in self._open:
            self._open.move_to_end(s)
            return self._open[s]
        handle = open_safetensors(self.path / shard_name(s))
        self._open[s] = handle
        if len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)
        return handle

    def locate(self, index: int) -> tuple[int, int]:
        """Global index -> (shard, row in the shard)."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        s = bisect.bisect_right(self.offsets, index) - 1
        return s, index - self.offsets[s]

    def __getitem__(self, index: int) -> dict[str, Any]:
        s, j = self.locate(index)
        f = self._shard(s)
        keys = set(f.keys())
        out: dict[str, Any] = {m: f.get_slice(m)[j : j + 1][0] for m in MODALITIES}
        out["caption"] = self.captions[index]
        if "caption_index" in keys:
            row = int(f.get_slice("caption_index")[j : j + 1][0])
            for m in MODALITIES:
                for kind in ("cond", "pooled"):
                    name = f"{m}_{kind}"
                    if name in keys:
                        out[name] = f.get_slice(name)[row : row + 1][0]
        return out

    def load_all(self) -> dict[str, Tensor]:
        """Every pair in memory as {key: (N, ...)} (conds expanded per sample); for small caches."""
        parts: dict[str, list[Tensor]] = {}
        for s, n in enumerate(self.counts):
            if n == 0:
                continue
            with open_safetensors(self.path / shard_name(s)) as f:
                t = {k: f.get_tensor(k) for k in f.keys()}
            rows = t.pop("caption_index", None)
            for k, v in t.items():
                parts.setdefault(k, []).append(v if k in MODALITIES else v[rows])
        return {k: torch.cat(v) for k, v in parts.items()}


def _missing_shards(path: Path) -> list[str]:
    key_file = path / KEY_FILE
    if not key_file.exists():
        return ["all (no cache here)"]
    existing = {p.name for p in path.glob("shard-*.safetensors")}
    last = max((int(n[6:11]) for n in existing), default=-1)
    return [shard_name(s) for s in range(last + 1) if shard_name(s) not in existing]


def collate_pairs(samples: Sequence[Mapping]) -> dict:
    """Stack a list of :class:`ShardedPairs` samples into one batch dict (tensors stacked,
    other values listed). Keys missing from some samples are an error: a batch is all
    conditioned or none is."""
    keys = set(samples[0])
    for s in samples[1:]:
        if set(s) != keys:
            raise ValueError(
                f"samples in one batch have different keys: {sorted(keys)} vs {sorted(s)}"
            )
    out = {}
    for k in samples[0]:
        values = [s[k] for s in samples]
        out[k] = torch.stack(values) if isinstance(values[0], Tensor) else values
    return out
