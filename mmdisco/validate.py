"""Config validation before any heavy work: every numeric range and path of a script's config,
checked up front and reported together, one line per key.

    validate_train(cfg)     # scripts/train.py (before the bases are loaded)
    validate_sample(cfg)    # scripts/sample.py
    validate_evaluate(cfg)  # scripts/evaluate.py

Each raises :class:`ConfigError` listing every problem as ``key: what is wrong (got value)``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from mmdisco.config import LR_DECAYS
from mmdisco.faults import NONFINITE_MODES
from mmdisco.loss import (
    DSM_REDUCTIONS,
    DSM_WEIGHTINGS,
    check_contrastive,
    check_negatives,
    contrastive_on,
)
from mmdisco.pairs.fakes import SEEDINGS as FAKE_SEEDINGS
from mmdisco.runs import CONFIG_FILE, WEIGHTS_FILE
from mmdisco.sampling import SOLVERS, SPACINGS
from mmdisco.scale_search import CRITERIA, SCORERS

MIXED_PRECISION = ("no", "bf16", "fp16")
_UNSET = object()


class ConfigError(ValueError):
    """Bad config values: one line per key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"invalid configuration ({len(problems)} problem(s)):\n{lines}")


class Checks:
    """Collects one line per bad key of ``cfg``."""

    def __init__(self, cfg: DictConfig):
        self.cfg, self.problems = cfg, []

    def get(self, key: str):
        """The value at ``key``; _UNSET if absent; a '???' value is reported here."""
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(self.cfg, parent) if parent else self.cfg
        if not isinstance(node, DictConfig) or leaf not in node.keys():  # keys(): also ???
            return _UNSET
        if OmegaConf.is_missing(node, leaf):
            self.fail(key, "must be set (it is ???)")
            return _UNSET
        return node[leaf]

    def fail(self, key: str, message: str) -> None:
        if f"{key}: {message}" not in self.problems:
            self.problems.append(f"{key}: {message}")

    def integer(self, key: str, low: int, optional: bool = False) -> None:
        value = self.get(key)
        if value is _UNSET or (optional and value is None):
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            null = " or null" if optional else ""
            self.fail(key, f"must be an integer >= {low}{null}, got {value!r}")

    def number(self, key, low=None, high=None, low_open=False, high_open=True, optional=False):
        """A finite number in [low, high) by default; ``low_open`` / ``high_open`` exclude
        the bounds."""
        value = self.get(key)
        if value is _UNSET or (optional and value is None):
            return
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            lo = "" if low is None else f"{'(' if low_open else '['}{low}, "
            hi = "" if high is None else f"{high}{')' if high_open else ']'}"
            where = f" in {lo or '(-inf, '}{hi or 'inf)'}" if lo or hi else ""
            null = " or null" if optional else ""
            self.fail(key, f"must be a finite number{where}{null}, got {value!r}")

    def normalised(self, key: str, check):
        """``check(dict(value))`` of a mapping at ``key`` (its normalised form), a problem
        reported with check's message; None when the key is absent, null or not a mapping."""
        value = self.get(key)
        if not isinstance(value, DictConfig):
            return None
        try:
            return check(dict(value))
        except ValueError as e:
            self.fail(key, str(e))
            return None

    def choice(self, key: str, options, optional: bool = False) -> None:
        value = self.get(key)
        if value is _UNSET or (optional and value is None):
            return
        if value not in options:
            self.fail(key, f"must be one of {', '.join(map(str, options))}, got {value!r}")

    def boolean(self, key: str) -> None:
        value = self.get(key)
        if value is not _UNSET and not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {value!r}")

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)


# -- shared groups ---------------------------------------------------------------------------------
def _check_device(c: Checks) -> None:
    device = c.get("device")
    if device is _UNSET:
        return
    if not (device in ("auto", "cpu") or str(device).startswith("cuda")):
        c.fail("device", f"must be auto, cpu or cuda[:N], got {device!r}")
    elif str(device).startswith("cuda") and not torch.cuda.is_available():
        c.fail("device", f"{device} asked for but no CUDA device is available: use auto or cpu")
    c.integer("threads", 1, optional=True)
    c.boolean("progress")


def _check_sampler(c: Checks, optional: bool) -> None:
    c.choice("sampler.solver", SOLVERS, optional)
    c.integer("sampler.num_steps", 1, optional)
    c.choice("sampler.order", (1, 2, 3), optional)
    c.number("sampler.eta", low=0, optional=optional)
    c.choice("sampler.spacing", SPACINGS, optional)
    c.integer("sampler.joint_num_steps", 1, optional)
    scales = c.get("guidance.joint_scales")
    if isinstance(scales, DictConfig):
        for m, value in scales.items():
            if isinstance(value, ListConfig):  # one scale per bucket of t
                for k in range(len(value)):
                    c.number(f"guidance.joint_scales.{m}.{k}")
            else:
                c.number(f"guidance.joint_scales.{m}")
    elif isinstance(scales, (int, float)) and not isinstance(scales, bool):
        c.number("guidance.joint_scales")
    elif scales not in (_UNSET, None, "auto"):
        c.fail(
            "guidance.joint_scales",
            f"must be auto, a number or {{audio: s_a, video: s_v}}, got {scales!r}",
        )


def _writable_dir(c: Checks, key: str) -> None:
    """A directory that exists and is writable, or can be created under a writable parent."""
    value = c.get(key)
    if value in (_UNSET, None):
        return
    path = Path(str(value)).expanduser()
    if path.exists() and not path.is_dir():
        c.fail(key, f"{path} is a file, not a directory")
        return
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        c.fail(key, f"{existing} is not writable (a read-only disk?): choose another {key}")


def _existing(c: Checks, key: str, kind: str = "any", base: Path | None = None) -> None:
    value = c.get(key)
    if value in (_UNSET, None):
        return
    path = Path(str(value)).expanduser()
    if base is not None and not path.is_absolute() and not path.exists():
        path = base / path
    found = path.is_dir() if kind == "dir" else path.is_file() if kind == "file" else path.exists()
    if not found:
        what = {"dir": "directory", "file": "file"}.get(kind, "path")
        c.fail(key, f"{what} {path} not found")


def _check_paths(c: Checks) -> None:
    _writable_dir(c, "run_dir")
    _writable_dir(c, "cache_dir")
    _existing(c, "data.root", "dir")
    root = c.get("data.root")
    base = Path(str(root)).expanduser() if root not in (_UNSET, None) else None
    _existing(c, "data.csv", "file", base)
    _existing(c, "data.keep_list", "file")
    # base.*.pretrained: hub id or local dir; the bases load first and check_pretrained_dir
    # (mmdisco.io) already names a missing dir with the files it needs and where to get them


# -- per script ------------------------------------------------------------------------------------
def train_checks(cfg: DictConfig) -> Checks:
    c = Checks(cfg)
    c.integer("seed", 0)
    _check_device(c)
    for key in ("steps", "batch_size", "log_every", "ckpt_every", "t_buckets"):
        c.integer(f"train.{key}", 1)
    c.number("train.lr", low=0, low_open=True)
    c.choice("train.lr_decay", LR_DECAYS, optional=True)
    c.choice("train.mixed_precision", MIXED_PRECISION)
    if c.get("train.mixed_precision") == "fp16" and not torch.cuda.is_available():
        c.fail("train.mixed_precision", "fp16 needs a CUDA device; use bf16 (or no) on CPU")
    c.number("train.ema_decay", low=0, high=1, optional=True)
    c.number("train.grad_clip", low=0, low_open=True, optional=True)
    c.integer("train.num_workers", 0)
    c.choice("train.nonfinite", NONFINITE_MODES)
    c.boolean("train.tensorboard")
    for key in ("num_pairs", "batch_size", "shard_size"):
        c.integer(f"fake.{key}", 1)
    c.choice("fake.seeding", FAKE_SEEDINGS)
    c.number("loss.lambda_dsm", low=0)
    c.number("loss.cond_dropout", low=0, high=1, high_open=False)
    c.number("loss.t_power", low=0, low_open=True)
    c.choice("loss.dsm_reduction", DSM_REDUCTIONS)
    c.choice("loss.dsm_weighting", DSM_WEIGHTINGS)
    c.number("loss.dsm_weight_max", low=0, low_open=True)
    c.normalised("loss.negatives", check_negatives)
    contrastive = c.normalised("loss.contrastive", check_contrastive)
    batch = c.get("train.batch_size")
    grouped = contrastive_on(contrastive) and isinstance(batch, int)
    if grouped and batch % contrastive["group"]:
        c.fail(
            "loss.contrastive.group",
            f"must divide train.batch_size ({batch}): each group of real pairs shares a t",
        )
    c.number("calibration.holdout", low=0, high=1)
    c.choice("calibration.criterion", CRITERIA)
    if c.get("calibration.criterion") == "alignment":
        c.choice("calibration.scorer", SCORERS)
        c.integer("calibration.pairs", 1)
        grid = c.get("calibration.grid")
        if not isinstance(grid, ListConfig) or not grid or not all(
            isinstance(v, (int, float)) and v > 0 for v in grid
        ):
            c.fail("calibration.grid", f"must be a non-empty list of joint scales > 0, got {grid}")
    for key in ("max_pairs", "buckets", "draws", "batch_size"):
        c.integer(f"calibration.{key}", 1)
    if c.get("loss.bce") is False and c.get("loss.lambda_dsm") == 0 and not contrastive_on(
        contrastive
    ):
        c.fail(
            "loss.lambda_dsm", "is 0 with loss.bce=false and no loss.contrastive: the loss is empty"
        )
    _check_sampler(c, optional=False)
    _check_data_and_bases(c)
    _check_paths(c)
    return c


def _check_data_and_bases(c: Checks) -> None:
    """The sizes and ranges the data and base presets share (absent keys are skipped)."""
    for key in ("num_clips", "num_samples", "batch_size"):
        c.integer(f"data.{key}", 1)
    c.integer("data.max_clips", 1, optional=True)
    c.number("data.duration", low=0, low_open=True)
    c.number("data.start", low=0)
    c.number("data.min_rms", low=0)
    for key in ("train_steps", "batch_size", "num_train_timesteps"):
        c.integer(f"base.{key}", 1)
    c.number("base.lr", low=0, low_open=True)
    for m in ("audio", "video"):
        c.number(f"base.{m}.duration", low=0, low_open=True)
        c.number(f"base.{m}.guidance_scale", low=0)


def validate_train(cfg: DictConfig) -> None:
    """Every ``train.py`` value checked before the bases load; ConfigError lists the bad ones."""
    train_checks(cfg).raise_if_any()


def validate_sample(cfg: DictConfig) -> None:
    c = Checks(cfg)
    run_dir = _run_dir(c)
    c.integer("num_samples", 1)
    c.integer("batch_size", 1)
    c.integer("seed", 0)
    _check_device(c)
    _check_sampler(c, optional=True)
    if run_dir is not None and c.get("guided") is True and not (run_dir / WEIGHTS_FILE).exists():
        c.fail(
            "run_dir",
            f"{run_dir / WEIGHTS_FILE} not found: training has not finished (resume it with "
            f"`python scripts/train.py run_dir={run_dir}`), or sample with guided=false",
        )
    c.boolean("guided")
    c.raise_if_any()


def validate_evaluate(cfg: DictConfig) -> None:
    c = Checks(cfg)
    metrics = c.get("metrics")
    if metrics not in (_UNSET, None) and len(metrics) > 0:  # the suite: any folder of mp4s
        run_dir = Path(str(c.get("run_dir")))
        if not run_dir.is_dir():
            c.fail("run_dir", f"{run_dir} is not a directory (the folder holding the samples)")
            run_dir = None
    else:
        run_dir = _run_dir(c)
    samples = c.get("samples")
    names = list(samples) if isinstance(samples, ListConfig) else [samples]
    if samples is not _UNSET and run_dir is not None:
        for name in names:
            if not (run_dir / str(name)).exists():
                c.fail("samples", f"{run_dir / str(name)} not found: run scripts/sample.py first")
    if c.get("out") not in (_UNSET, None) and len(names) > 1:
        c.fail("out", "names one metrics file: use it with a single samples= entry")
    c.raise_if_any()


def _run_dir(c: Checks) -> Path | None:
    value = c.get("run_dir")
    if value is _UNSET:
        return None
    run_dir = Path(str(value))
    if not (run_dir / CONFIG_FILE).is_file():
        c.fail(
            "run_dir",
            f"{run_dir / CONFIG_FILE} not found: {run_dir} is not a training run (train one "
            f"with `python scripts/train.py run_dir={run_dir} ...`)",
        )
        return None
    try:
        OmegaConf.load(run_dir / CONFIG_FILE)
    except Exception as e:  # yaml's errors have no common base class worth naming here
        c.fail(
            "run_dir",
            f"{run_dir / CONFIG_FILE} is damaged ({type(e).__name__}): rerun "
            f"`python scripts/train.py run_dir={run_dir}` with the run's overrides to rewrite it",
        )
        return None
    return run_dir
