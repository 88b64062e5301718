"""Metrics of generated pairs (metrics depend on data, never the reverse).

- Chosen by the run's data set (:func:`evaluate`): the toy's exact-density scores of a
  ``samples.npz``; the synthetic world's decoded class / onset agreement (and AV-Align) over a
  folder of mp4s.
- The paper's suite over any folders of mp4s (:mod:`mmdisco.metrics.suite`): feature-set
  distances (:func:`frechet_distance`, :func:`polynomial_mmd`) over the paper's feature
  networks, CLAP, ImageBind and AV-Align, each output named by its protocol.
"""

from __future__ import annotations

import math
import os

from mmdisco.data.paired import SyntheticPairs
from mmdisco.data.toy import ToyPairs
from mmdisco.metrics.frechet import feature_stats, frechet_distance, polynomial_mmd
from mmdisco.metrics.synthetic import evaluate_folder
from mmdisco.metrics.synthetic import format_table as synthetic_table
from mmdisco.metrics.toy import evaluate_npz

__all__ = [
    "evaluate",
    "feature_stats",
    "format_table",
    "frechet_distance",
    "has_metrics",
    "polynomial_mmd",
    "scalar_table",
]


def has_metrics(data) -> bool:
    """Whether the data set has metrics of its own (:func:`evaluate`)."""
    return isinstance(data, (ToyPairs, SyntheticPairs))


def evaluate(data, path: str | os.PathLike, **options) -> dict:
    """The metrics of the samples at ``path`` (a file or folder from scripts/sample.py) against
    the data set ``data``; ``options`` are the metric's keyword arguments (e.g. av_align)."""
    if isinstance(data, ToyPairs):
        return evaluate_npz(path, data.target, **options)
    if isinstance(data, SyntheticPairs):
        return evaluate_folder(path, progress=data.progress, **options)
    raise ValueError(
        f"no metrics for data set {type(data).__name__}: "
        "scripts/evaluate.py scores the toy (samples.npz) and the synthetic world (mp4 folders)"
    )


def format_table(data, results: dict[str, dict]) -> str:
    """The results of several sample sets side by side, one column each."""
    if isinstance(data, SyntheticPairs):
        return synthetic_table(results)
    return scalar_table(results)


def scalar_table(results: dict[str, dict]) -> str:
    """Scalar metrics as a table: one row per metric, one column per sample set."""
    keys = [
        k
        for k, v in next(iter(results.values())).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    width = max(len(k) for k in keys) + 2
    lines = [" " * width + "".join(f"{n:>14}" for n in results)]
    for k in keys:
        cells = []
        for r in results.values():
            v = r.get(k)
            missing = v is None or (isinstance(v, float) and math.isnan(v))
            cells.append("-" if missing else f"{v:.4g}")
        lines.append(f"{k:<{width}}" + "".join(f"{c:>14}" for c in cells))
    return "\n".join(lines)
