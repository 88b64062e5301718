"""Torn and corrupt files: one clear error each, naming the file, what is wrong and what to do,
and the repairs done automatically (a damaged cache shard or pair file is rebuilt).

Every file mmdisco writes is written atomically (temporary name, then rename), so a kill never
leaves half a file under a final name; what these checks catch is damage from outside: a copy
or download cut short, a full disk during a copy, a file truncated or overwritten by hand.
safetensors checks its header against the file size, so a truncated file is always caught;
flipped bits inside the tensor data are not (there is no checksum).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

log = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("checkpoint", "checkpoint.prev", "checkpoint.old")
CACHE_PREFIXES = ("latents-", "fakes-")
WEIGHT_FILES = ("discriminator.safetensors", "discriminator_raw.safetensors")


class CorruptFileError(RuntimeError):
    """A file that exists but cannot be read: ``path``, ``problem`` and ``fix`` name it all."""

    def __init__(self, path: str | os.PathLike, problem: str, fix: str):
        self.path, self.problem, self.fix = Path(path), problem, fix
        super().__init__(f"{self.path} is damaged: {problem}. {fix}")


def fix_for(path: Path) -> str:
    """What the user should do about a damaged file, by the role its name gives it."""
    parent = path.parent
    if parent.name in CHECKPOINT_NAMES:
        return (
            f"The training checkpoint {parent} is torn; train.py falls back to "
            f"{parent.with_name('checkpoint.prev')} when it is kept. Otherwise move {parent} "
            "away (it is not overwritten while damaged) to restart training from step 0"
        )
    if parent.name.startswith(CACHE_PREFIXES) and path.name.startswith("shard-"):
        return "It is a cache shard: rerun train.py, which deletes and rebuilds it by itself"
    if path.name in WEIGHT_FILES:
        return (
            f"Rerun `python scripts/train.py run_dir={parent}` with the run's overrides: it "
            "resumes from the checkpoint and writes the weights again"
        )
    return "Restore it or create it again (a copy or download cut short?)"


# -- safetensors -------------------------------------------------------------------------------
def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as safetensors (its header and size), or None if it can."""
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except SafetensorError as e:
        return f"not a complete safetensors file ({e})"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return None


def read_safetensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with a :class:`CorruptFileError` naming the file."""
    try:
        return load_file(str(path), device=device)
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError) as e:
        problem = f"not a complete safetensors file ({e})"
        raise CorruptFileError(path, problem, fix_for(Path(path))) from None


def open_safetensors(path: str | os.PathLike):
    """``safe_open(path)`` (memory-mapped, lazy) with a :class:`CorruptFileError`."""
    path = Path(path)
    try:
        return safe_open(str(path), framework="pt")
    except SafetensorError as e:
        raise CorruptFileError(
            path, f"not a complete safetensors file ({e})", fix_for(path)
        ) from None


def discard_if_damaged(path: str | os.PathLike) -> bool:
    """Delete a damaged derived file (it is rebuilt by the caller) and say so; True if done."""
    path = Path(path)
    if not path.exists():
        return False
    problem = safetensors_problem(path)
    if problem is None:
        return False
    log.warning("%s is damaged (%s): deleted, it is being rebuilt", path, problem)
    path.unlink(missing_ok=True)
    return True


def repair_cache(out_dir: str | os.PathLike) -> list[str]:
    """Delete a sharded cache's damaged shards (and its index, which then lists shards that are
    no longer there) so that building the cache writes them again; returns their names.

    A damaged index.json is deleted too (it is rebuilt from the shards). Any rank may call
    this at any time: a shard that exists is complete unless damaged from outside.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    index_file = out_dir / "index.json"
    expected = None
    if index_file.exists():
        try:
            expected = int(json.loads(index_file.read_text())["num_shards"])
        except (ValueError, KeyError, TypeError, OSError) as e:
            log.warning("%s is damaged (%s): deleted, it is being rebuilt", index_file, e)
            index_file.unlink(missing_ok=True)
    damaged = [p.name for p in sorted(out_dir.glob("shard-*.safetensors")) if discard_if_damaged(p)]
    missing = []
    if expected is not None:
        missing = [
            s for s in range(expected) if not (out_dir / f"shard-{s:05d}.safetensors").exists()
        ]
    if (damaged or missing) and index_file.exists():
        index_file.unlink(missing_ok=True)
        log.warning(
            "cache %s: rebuilding %d damaged or missing shard(s)",
            out_dir,
            len(damaged) or len(missing),
        )
    return damaged


# -- CSV ---------------------------------------------------------------------------------------
def read_csv_rows(
    path: str | os.PathLike, fieldnames=None, **kwargs
) -> tuple[list[dict[str, str]], list[str]]:
    """(rows, columns) of a CSV with a header row (or ``fieldnames``); a file that is not text,
    holds NUL bytes or ends in the middle of a row raises :class:`CorruptFileError`."""
    path = Path(path)
    fix = "Restore it from the data set's download (or regenerate it)"
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f, fieldnames=fieldnames, **kwargs)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except UnicodeDecodeError as e:
        raise CorruptFileError(
            path, f"not UTF-8 text ({e.reason} at byte {e.start})", fix
        ) from None
    except csv.Error as e:
        raise CorruptFileError(path, f"not a CSV file ({e})", fix) from None
    for i, row in enumerate(rows):
        empty = [k for k, v in row.items() if v is None]
        if empty:
            line = i + (1 if fieldnames is None else 0) + 1
            problem = f"row {line} ends before column(s) {empty} (a file cut short?)"
            raise CorruptFileError(path, problem, fix)
    return rows, columns


def csv_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete CSV (see :func:`read_csv_rows`), or None."""
    try:
        read_csv_rows(path)
    except CorruptFileError as e:
        return e.problem
    return None


def discard_csv_if_damaged(path: str | os.PathLike) -> bool:
    """Delete a damaged derived CSV (the caller writes it again) and say so; True if done."""
    path = Path(path)
    problem = csv_problem(path) if path.exists() else None
    if problem is None:
        return False
    log.warning("%s is damaged (%s): deleted, it is being written again", path, problem)
    path.unlink(missing_ok=True)
    return True


# -- non-finite losses and gradients -------------------------------------------------------------
NONFINITE_MODES = ("stop", "skip")


class NonFiniteError(FloatingPointError):
    """A training step whose loss or gradient is NaN or infinite (``train.nonfinite=stop``)."""


def _count_bad(x) -> tuple[int, int]:
    x = torch.as_tensor(x).detach()
    return int((~torch.isfinite(x)).sum()), x.numel()


def describe_nonfinite(terms: dict, grad_norm) -> str:
    """Which term went non-finite: L_D on real / fake pairs, L_DSM (real pairs, its residual),
    or only the gradient."""
    parts = []
    if _count_bad(terms["l_d"])[0]:
        sides = [
            f"{side} pairs: {bad} of {n} logits non-finite"
            for side in ("real", "fake")
            for bad, n in [_count_bad(terms[f"logit_{side}"])]
            if bad
        ]
        parts.append(f"L_D = {float(terms['l_d'])} ({'; '.join(sides) or 'logits finite'})")
    if _count_bad(terms["l_dsm"])[0]:
        res = [m for m in ("audio", "video") if f"res_norm_{m}" in terms]
        bad_res = [m for m in res if _count_bad(terms[f"res_norm_{m}"])[0]]
        where = f"residual r_{'/r_'.join(bad_res)} non-finite" if bad_res else "residual finite"
        parts.append(f"L_DSM = {float(terms['l_dsm'])} (real pairs; {where})")
    if not parts and _count_bad(terms["loss"])[0]:
        parts.append(f"the loss = {float(terms['loss'])}")
    if _count_bad(grad_norm)[0]:
        what = "the gradient norm" if parts else "only the gradient (the loss is finite): norm"
        parts.append(f"{what} = {float(torch.as_tensor(grad_norm))}")
    return "; ".join(parts) or "another process's loss or gradient"


def _checkpoint_note(checkpoint: Path) -> str:
    try:
        step = json.loads((checkpoint / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return f"no checkpoint was written yet ({checkpoint})"
    return f"the last good checkpoint {checkpoint} (step {step}) is left as it was"


class NonFiniteGuard:
    """``train.nonfinite``: ``stop`` raises :class:`NonFiniteError` at the first step whose
    loss terms or gradient norm are NaN / Inf, before the optimizer applies it; ``skip`` drops
    such steps (no update), warns, and counts them per log row (``skipped_nonfinite``).

    The decision is all-reduced over the processes, so every rank stops or skips together.
    ``check_grad=False`` (fp16 with a loss scaler, which skips overflowing steps itself) looks
    at the loss terms only.
    """

    def __init__(self, mode: str, accelerator, checkpoint: Path, check_grad: bool = True):
        if mode not in NONFINITE_MODES:
            raise ValueError(f"train.nonfinite must be one of {NONFINITE_MODES}, got {mode!r}")
        self.mode, self.accelerator, self.checkpoint = mode, accelerator, Path(checkpoint)
        self.check_grad, self.skipped, self.total = check_grad, 0, 0

    def skip(self, step: int, terms: dict, grad_norm) -> bool:
        """True if step ``step`` (0-based) must not be applied; raises in ``stop`` mode."""
        values = [terms[k].detach().float().reshape(1) for k in ("loss", "l_d", "l_dsm")]
        if self.check_grad:
            values.append(torch.as_tensor(grad_norm).detach().float().reshape(1).to(values[0]))
        bad = (~torch.isfinite(torch.cat(values))).any().float().reshape(1)
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if not bad.item():
            return False
        what = describe_nonfinite(terms, grad_norm if self.check_grad else 0.0)
        if self.mode == "stop":
            raise NonFiniteError(
                f"non-finite value at training step {step + 1}: {what}. Nothing of this step "
                f"was applied; {_checkpoint_note(self.checkpoint)}. Lower train.lr, set "
                "train.grad_clip, keep loss.residual_fp32=true, or set train.nonfinite=skip to "
                "skip such batches (counted in train_log.csv, column skipped_nonfinite)"
            )
        self.skipped += 1
        self.total += 1
        log.warning("training step %d skipped (train.nonfinite=skip): %s", step + 1, what)
        return True

    def log_into(self, row: dict) -> None:
        """``skipped_nonfinite``: the steps skipped since the last row (skip mode only)."""
        if self.mode == "skip":
            row["skipped_nonfinite"] = self.skipped
        self.skipped = 0
