"""Atomic file writes, safetensors checkpoints and checks of pretrained directories."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from mmdisco.faults import read_safetensors


def _atomic_target(path: str | Path) -> tuple[Path, str]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return path, tmp


def _discard(tmp: str) -> None:
    """A failed write (disk full, read-only, killed by an exception) leaves no temp file."""
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path, tmp = _atomic_target(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def atomic_savez(path: str | Path, arrays: dict) -> None:
    """``numpy.savez`` to a temp name, then renamed (a kill never leaves half an .npz); like
    numpy, ``.npz`` is appended to a name without it."""
    import io

    import numpy as np

    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata=None) -> None:
    """safetensors file, written to a temp name and renamed (a kill never leaves half a file)."""
    path, tmp = _atomic_target(path)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata)
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return read_safetensors(path, device=str(device))  # a damaged file: CorruptFileError


def save_module(path: str | Path, module: nn.Module) -> None:
    save_tensors(path, module.state_dict())


def load_module(path: str | Path, module: nn.Module, strict: bool = True) -> nn.Module:
    module.load_state_dict(load_tensors(path), strict=strict)
    return module
