"""The one hashing scheme of the library: canonical JSON of a config, SHA-256.

Used for every cache name (real latents, fake pairs, the trained toy base) and, where no
config names the weights, for a fingerprint of a module's weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def plain(obj: Any) -> Any:
    """DictConfig / Mapping / Path / tuple -> JSON-able values."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_hash(key: Any, digits: int = 16) -> str:
    """``digits`` hex digits of the SHA-256 of the canonical JSON of ``key``."""
    text = json.dumps(plain(key), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:digits]


def weights_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over a module's class, parameter and buffer names, shapes, dtypes and bytes."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
