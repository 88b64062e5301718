"""Score generated samples of a run against its data set's target.

    python scripts/evaluate.py run_dir=runs/toy_ind
    python scripts/evaluate.py run_dir=runs/toy_ind samples=samples_nojoint.npz
    python scripts/evaluate.py run_dir=outputs/demo samples=[unguided,guided]   # mp4 folders

``samples`` names a file or folder inside run_dir written by scripts/sample.py, or a list of
them: each gets its metrics JSON beside it (``<name>_metrics.json``) and one table compares
them, one column each. What is measured is the data set's business (``data.evaluate``): the
toy scores points against the exact target density; the synthetic world decodes class and
onset from each mp4's frames and sound alone (validity, agreement, AV-Align).
"""

from __future__ import annotations

import math
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from mmdisco.io import atomic_write_json
from mmdisco.runs import CONFIG_FILE
from mmdisco.validate import validate_evaluate


def format_results(results: dict[str, dict]) -> str:
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


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    validate_evaluate(cfg)  # every value and path, before any heavy work (mmdisco.validate)
    run_dir = Path(cfg.run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise FileNotFoundError(
            f"{run_dir / CONFIG_FILE} not found: {run_dir} is not a training run "
            f"(train one with `python scripts/train.py run_dir={run_dir} ...`)"
        )
    names = list(cfg.samples) if isinstance(cfg.samples, ListConfig) else [cfg.samples]
    if cfg.out and len(names) > 1:
        raise ValueError("out= names one metrics file: use it with a single samples= entry")
    data = instantiate(OmegaConf.load(run_dir / CONFIG_FILE).data)
    options = OmegaConf.to_container(cfg.options, resolve=True) if cfg.options else {}
    results = {}
    for name in names:
        path = run_dir / name
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: run `python scripts/sample.py run_dir={run_dir}` first"
            )
        metrics = data.evaluate(path, **options)
        out = run_dir / (cfg.out or f"{path.stem}_metrics.json")
        atomic_write_json(out, metrics)
        results[path.stem] = metrics
        print(f"metrics of {path} -> {out}")
    table = getattr(data, "format_table", None)
    print(table(results) if table else format_results(results))


if __name__ == "__main__":
    main()
