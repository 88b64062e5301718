"""Sharded latent caches: real pairs encoded once by the bases, read back as a Dataset.

Layout of a cache directory (``<cache_dir>/latents-<hash>`` for real pairs,
``<cache_dir>/fakes-<hash>`` for pre-sampled fakes, see ``mmdisco.fakes``)::

    key.json                 what the hash is of (base configs or weights, data config, ...)
    shard-00000.safetensors  latents of clips [0, S), [S, 2S), ... (S = shard_size)
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
writes index.json from the shards' metadata. A shard's content depends only on the data, the
bases and its index, so 1 rank and W ranks write the same files.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from mmdisco.bases.protocol import Condition
from mmdisco.data.folder import collate_clips
from mmdisco.faults import open_safetensors, repair_cache
from mmdisco.io import atomic_write_json, save_tensors

CACHE_VERSION = 1
INDEX_FILE = "index.json"
KEY_FILE = "key.json"
MODALITIES = ("audio", "video")


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


# -- hashing -------------------------------------------------------------------------------
def _plain(obj: Any) -> Any:
    """DictConfig / Path / tuple -> JSON-able values."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_hash(key: Any) -> str:
    """16 hex digits of the SHA-256 of the canonical JSON of ``key``."""
    text = json.dumps(_plain(key), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over a module's class, parameter and buffer names, shapes, dtypes and bytes."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def bases_key(bases, base_config: Any = None) -> Any:
    """What identifies the bases in a cache key: the resolved base config (e.g. Hydra's
    ``cfg.base``) when given, else a fingerprint of every modality's weights (exact, but it
    reads all weights: seconds for GB-sized models)."""
    if base_config is not None:
        return {"config": _plain(base_config)}
    return {m: weights_fingerprint(bases[m]) for m in MODALITIES}


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
    atomic_write_json(out_dir / KEY_FILE, _plain(key))
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
        "key": _plain(key),
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


# -- prompt tables -------------------------------------------------------------------------
_EMPTY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def empty_condition(base) -> Condition | None:
    """``base.encode_prompt([""])`` computed once per base and device (None: the base is
    not text-conditional)."""
    device = _device_of(base)
    cached = _EMPTY.get(base)
    if cached is None or cached[0] != device:
        try:
            cond = base.encode_prompt([""])
        except NotImplementedError:
            cond = None
        _EMPTY[base] = cached = (device, cond)
    return cached[1]


def conditional_modalities(bases) -> list[str]:
    return [m for m in MODALITIES if empty_condition(bases[m]) is not None]


def prompt_tables(bases, prompts: list[str]) -> tuple[dict[str, Tensor], Tensor, list[str]]:
    """Encode the distinct prompts once: ({m_cond: (U, ...), m_pooled: (U, D)} on the CPU,
    caption_index (n,) long, the distinct prompts in order of first use)."""
    distinct = list(dict.fromkeys(prompts))
    caption_index = torch.tensor([distinct.index(p) for p in prompts], dtype=torch.long)
    tables = {}
    for m in conditional_modalities(bases):
        cond = bases[m].encode_prompt(distinct)
        if not isinstance(cond.cond, Tensor):
            raise TypeError(f"{m} base condition is {type(cond.cond).__name__}, not a tensor")
        tables[f"{m}_cond"] = cond.cond.detach().cpu()
        if cond.pooled is not None:
            tables[f"{m}_pooled"] = cond.pooled.detach().cpu().clone()  # may alias cond
    return tables, caption_index, distinct


# -- real latents ----------------------------------------------------------------------------
def real_cache_dir(data, bases, cache_dir: str | os.PathLike, base_config: Any = None) -> Path:
    """``<cache_dir>/latents-<hash>`` for these bases and this (bound) data set."""
    data.for_bases(bases)
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

    ``data``: a :class:`~mmdisco.data.folder.PairedVideoFolder` (or anything with its
    ``for_bases``, ``cache_key``, ``note_skipped`` and Dataset interface, e.g.
    ``SyntheticPairs``); ``bases``: ``bases["audio"]`` / ``bases["video"]`` with ``encode``
    (and ``encode_prompt`` for the captions of text-conditional bases). Clips [s S, (s+1) S)
    form shard s; skipped clips are left out and listed. With several ranks the index is
    written by the last one to finish: read the cache after every rank returns (or pass
    ``accelerator``, which synchronises). A second call with the same bases and data returns
    at once.
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
        if hasattr(data, "report"):
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
    latents: dict[str, list[Tensor]] = {m: [] for m in MODALITIES}
    captions, paths, skipped = [], [], []
    for batch in loader:
        data.note_skipped(batch["skipped"])
        skipped += [list(s) for s in batch["skipped"]]
        if not batch["caption"]:
            continue
        latents["audio"].append(bases["audio"].encode(batch["audio"]).detach().cpu())
        latents["video"].append(bases["video"].encode(batch["video"]).detach().cpu())
        captions += batch["caption"]
        paths += batch["path"]
    tensors = {m: torch.cat(v) for m, v in latents.items() if v}
    conditional = conditional_modalities(bases)
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


def batch_conditions(bases, batch: Mapping[str, Any]) -> dict[str, Condition | None]:
    """Rebuild each modality's Condition for a collated ShardedPairs batch: cond (B, ...) and
    pooled (B, D) from the batch, uncond / pooled_uncond (1, ...) from the base's empty
    prompt (computed once per base), guidance scale from the base. None for a modality
    without ``{m}_cond`` in the batch (an unconditional base)."""
    names = getattr(bases, "names", None) or list(bases.keys())
    out: dict[str, Condition | None] = {}
    for m in names:
        if f"{m}_cond" not in batch:
            out[m] = None
            continue
        empty = empty_condition(bases[m])
        if empty is None:
            raise ValueError(f"the batch has {m}_cond but the {m} base is not text-conditional")
        device = _device_of(bases[m])
        pooled = batch.get(f"{m}_pooled")
        out[m] = Condition(
            cond=batch[f"{m}_cond"].to(device),
            uncond=empty.uncond if empty.uncond is not None else empty.cond,
            guidance_scale=empty.guidance_scale,
            pooled=None if pooled is None else pooled.to(device),
            pooled_uncond=empty.pooled_uncond if empty.pooled_uncond is not None else empty.pooled,
        )
    return out


def _device_of(base) -> torch.device:
    try:
        return next(base.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")
