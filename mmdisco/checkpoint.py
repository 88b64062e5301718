"""Training checkpoints: safetensors weights (+ EMA) + optimizer + RNG per process + step + config.

A checkpoint is a directory written under a temporary name and renamed into place, so a kill
leaves either the previous checkpoint or the new one, never half of one. The one before it is
kept as ``checkpoint.prev``: a checkpoint damaged from outside (truncated, a file missing) is
skipped with a warning and training resumes from ``.prev``; with none loadable it stops with
an error and overwrites nothing. Its files:

    model.safetensors        the discriminator's weights (unwrapped, float32 as trained)
    ema.safetensors          the EMA of those weights (only when EMA is on)
    optimizer.safetensors    the optimizer's tensors; its scalars and groups are in state.json
    rng_rank{r}.safetensors  process r's torch CPU (and CUDA) generator states
    state.json               step, world size, optimizer scalars, extra state (e.g. the fp16
                             loss scaler), python / numpy RNG per rank, the resolved config

With several processes every rank writes its own RNG file into the temporary directory that
rank 0 creates, and rank 0 renames it once all have written (``barrier`` separates the phases).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmdisco.faults import CorruptFileError, safetensors_problem
from mmdisco.io import atomic_write_json, load_tensors, save_tensors

log = logging.getLogger(__name__)
PREV = ".prev"  # the checkpoint before the last one is kept as <checkpoint>.prev


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


def _rng_tensors() -> dict[str, torch.Tensor]:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    return rng


def _py_rng_state() -> dict:
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(state), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }


def _set_py_rng_state(state: dict) -> None:
    version, inner, gauss = state["python"]
    random.setstate((version, tuple(inner), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _no_barrier() -> None:
    return None


def save_checkpoint(
    path: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict | None = None,
    ema: dict[str, torch.Tensor] | None = None,
    extra: dict | None = None,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = _no_barrier,
) -> None:
    """Write the checkpoint of ``step``; every rank calls it (only rank 0 writes the weights).

    ``extra`` is JSON-serialisable state (e.g. the loss scaler's), restored by
    :func:`load_checkpoint`'s return value.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a kill during an earlier save
        tmp.mkdir(parents=True)
    barrier()
    save_tensors(tmp / f"rng_rank{rank}.safetensors", _rng_tensors())
    atomic_write_json(tmp / f"py_rng_rank{rank}.json", _py_rng_state())
    if rank == 0:
        save_tensors(tmp / "model.safetensors", model.state_dict())
        if ema is not None:
            save_tensors(tmp / "ema.safetensors", ema)
        opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
        save_tensors(tmp / "optimizer.safetensors", opt_tensors)
        state = {
            "step": step,
            "world_size": world_size,
            "optimizer": opt_meta,
            "extra": extra or {},
            "config": config,
        }
        atomic_write_json(tmp / "state.json", state)
    barrier()
    if rank == 0:
        _rotate(path, tmp)
    barrier()


def _rotate(path: Path, tmp: Path) -> None:
    """checkpoint -> checkpoint.prev, then tmp -> checkpoint: two renames, so a kill leaves a
    complete checkpoint under one of the two names. A damaged ``checkpoint`` (one that
    :func:`load_checkpoint` fell back from) is dropped instead of replacing a good ``.prev``."""
    prev = path.with_name(path.name + PREV)
    if path.exists():  # else ``prev`` may be the only complete checkpoint: keep it
        if checkpoint_problem(path) is None:
            shutil.rmtree(prev, ignore_errors=True)
            path.rename(prev)
        else:
            shutil.rmtree(path)
    tmp.rename(path)
    shutil.rmtree(path.with_name(path.name + ".old"), ignore_errors=True)  # older layout


def checkpoint_problem(path: str | Path) -> str | None:
    """Why the checkpoint directory ``path`` cannot be loaded (missing or torn files), or None.
    Reads only state.json and the safetensors headers."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        int(state["step"]), state["optimizer"]["param_groups"]
    except FileNotFoundError:
        return "state.json is missing"
    except (ValueError, KeyError, TypeError, OSError) as e:
        return f"state.json is torn or not JSON ({e})"
    for name in [p.name for p in path.glob("py_rng_rank*.json")]:
        try:
            json.loads((path / name).read_text())
        except (ValueError, OSError) as e:
            return f"{name} is torn or not JSON ({e})"
    for name in ("model.safetensors", "optimizer.safetensors", *_optional_files(path)):
        if not (path / name).exists():
            return f"{name} is missing"
        problem = safetensors_problem(path / name)
        if problem is not None:
            return f"{name} is {problem}"
    return None


def _optional_files(path: Path) -> list[str]:
    names = [p.name for p in path.glob("*rng_rank*.safetensors")]
    return names + (["ema.safetensors"] if (path / "ema.safetensors").exists() else [])


def _candidates(path: Path) -> list[Path]:
    """Where a checkpoint may be, newest first: ``checkpoint``, ``checkpoint.prev`` (kept by
    the last save; also the only one after a kill between its two renames), ``.old`` (the
    layout of earlier versions)."""
    names = (path, path.with_name(path.name + PREV), path.with_name(path.name + ".old"))
    return [p for p in names if p.exists()]


def _resolve(path: Path) -> Path:
    """The newest complete checkpoint; a damaged newer one is reported and skipped, and with
    none left a :class:`CorruptFileError` explains that nothing is overwritten."""
    problems = []
    for candidate in _candidates(path):
        problem = checkpoint_problem(candidate)
        if problem is None:
            if problems:
                log.warning(
                    "checkpoint %s is damaged (%s): resuming from %s instead",
                    *problems[0], candidate,
                )  # fmt: skip
            return candidate
        problems.append((candidate, problem))
    if not problems:
        raise FileNotFoundError(f"no checkpoint at {path}")
    listed = "; ".join(f"{p}: {why}" for p, why in problems)
    raise CorruptFileError(
        path,
        f"no loadable checkpoint ({listed})",
        f"Training refuses to overwrite it. Move {path} away (e.g. `mv {path} {path}.bad`) to "
        f"restart from step 0, or restore it",
    )


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: dict[str, torch.Tensor] | None = None,
    rank: int = 0,
) -> tuple[int, dict]:
    """Restore everything saved by :func:`save_checkpoint` into ``model``, ``optimizer``,
    ``ema`` (in place) and this rank's RNGs; returns (step to continue from, extra state).

    A rank with no RNG file (the run was saved with fewer processes) keeps its own RNG state.
    """
    path = _resolve(Path(path))
    state = json.loads((path / "state.json").read_text())
    model.load_state_dict(load_tensors(path / "model.safetensors"))
    opt = _unflatten_optimizer(load_tensors(path / "optimizer.safetensors"), state["optimizer"])
    optimizer.load_state_dict(opt)
    if ema is not None:
        if not (path / "ema.safetensors").exists():
            raise FileNotFoundError(
                f"{path} has no ema.safetensors: it was saved with EMA off; resume with "
                "train.ema_decay=null or start a new run_dir"
            )
        for k, v in load_tensors(path / "ema.safetensors").items():
            ema[k].copy_(v)
    rng_file = path / f"rng_rank{rank}.safetensors"
    if rng_file.exists():
        rng = load_tensors(rng_file)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        _set_py_rng_state(json.loads((path / f"py_rng_rank{rank}.json").read_text()))
    return int(state["step"]), state.get("extra", {})


def checkpoint_exists(path: str | Path) -> bool:
    """Whether any checkpoint (complete or not) is there: training then resumes from it, or
    stops with a :class:`CorruptFileError` rather than start over and overwrite it."""
    return bool(_candidates(Path(path)))
