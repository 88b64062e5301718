"""Training checkpoints: safetensors weights + optimizer + RNG + step + resolved config.

A checkpoint is a directory written under a temporary name and renamed into place, so a kill
leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from mmdisco.io import load_tensors, save_tensors


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "scalars": {}}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}/{name}"] = value
            else:
                meta["scalars"][f"{pid}/{name}"] = value
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    items = list(tensors.items()) + list(meta["scalars"].items())
    for key, value in items:
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    config: dict | None = None,
) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    save_tensors(tmp / "model.safetensors", model.state_dict())
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    save_tensors(tmp / "optimizer.safetensors", opt_tensors)
    rng = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    save_tensors(tmp / "rng.safetensors", rng)
    (tmp / "state.json").write_text(
        json.dumps({"step": step, "optimizer": opt_meta, "config": config})
    )
    old = path.with_name(path.name + ".old")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> int:
    """Restore everything saved by :func:`save_checkpoint`; returns the step to continue from."""
    path = Path(path)
    if not path.exists() and path.with_name(path.name + ".old").exists():
        path = path.with_name(path.name + ".old")  # killed between the two renames
    state = json.loads((path / "state.json").read_text())
    model.load_state_dict(load_tensors(path / "model.safetensors"))
    opt = _unflatten_optimizer(load_tensors(path / "optimizer.safetensors"), state["optimizer"])
    optimizer.load_state_dict(opt)
    rng = load_tensors(path / "rng.safetensors")
    generator.set_state(rng["generator"])
    torch.set_rng_state(rng["torch"])
    return int(state["step"])


def checkpoint_exists(path: str | Path) -> bool:
    path = Path(path)
    return (path / "state.json").exists() or (
        path.with_name(path.name + ".old") / "state.json"
    ).exists()
