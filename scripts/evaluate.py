"""Score generated samples of a run against its data set's target and the paper's metrics.

    python scripts/evaluate.py run_dir=runs/toy_ind
    python scripts/evaluate.py run_dir=runs/toy_ind samples=samples_nojoint.npz
    python scripts/evaluate.py run_dir=outputs/demo samples=[unguided,guided]   # mp4 folders
    python scripts/evaluate.py run_dir=runs/vc2 samples=[unguided,guided] reference=REAL_DIR \\
        metrics=[fvd,kvd,fad,clap,av_align] weights_dir=WEIGHTS

``samples`` names a file or folder inside run_dir written by scripts/sample.py, or a list of
them: each gets its metrics JSON beside it (``<name>_metrics.json``) and one table compares
them, one column each. Two sources of metrics:

- the data set's own (``mmdisco.metrics.evaluate``, when run_dir is a training run whose data
  set has them): the toy scores points against the exact target density; the synthetic world decodes
  class and onset from each mp4's frames and sound alone (validity, agreement, AV-Align);
- ``metrics=[...]``: the paper's suite on mp4 folders (``mmdisco.metrics.suite``), each
  output named ``metric/protocol``, against the real clips of ``reference``; run_dir may then
  be any folder holding the sample folders.

With ``report=true`` (default) run_dir also gets ``evaluation.md``, ``evaluation.json``, the
bar chart ``evaluation.png`` and a self-contained ``report.html`` (table, chart, players).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from mmdisco.io import atomic_write_json
from mmdisco.metrics import evaluate, format_table, has_metrics
from mmdisco.report import format_text, write_outputs
from mmdisco.runs import CONFIG_FILE
from mmdisco.validate import validate_evaluate


def _suite(cfg: DictConfig):
    from mmdisco.metrics.suite import MetricSuite, SuiteConfig

    def plain(node):
        return OmegaConf.to_container(node, resolve=True) if node else {}

    return MetricSuite(
        SuiteConfig(
            weights_dir=cfg.weights_dir,
            paths=plain(cfg.weights),
            cache_dir=cfg.cache_dir,
            device=cfg.device,
            batch_size=cfg.batch_size,
            progress=cfg.progress,
            imagebind=plain(cfg.get("imagebind")),
            video_fps=cfg.get("video_fps"),
            synchformer=plain(cfg.get("synchformer")),
            desync_seconds=cfg.get("desync_seconds", 8.0),
        )
    )


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    validate_evaluate(cfg)  # every value and path, before any heavy work (mmdisco.validate)
    run_dir = Path(cfg.run_dir)
    metrics = list(cfg.metrics or [])
    is_run = (run_dir / CONFIG_FILE).exists()
    if not is_run and not metrics:
        raise FileNotFoundError(
            f"{run_dir / CONFIG_FILE} not found: {run_dir} is not a training run (train one "
            f"with `python scripts/train.py run_dir={run_dir} ...`), or name the paper's "
            "metrics to compute on its mp4 folders: metrics=[fvd,fad,clap,av_align] reference=DIR"
        )
    names = list(cfg.samples) if isinstance(cfg.samples, ListConfig) else [cfg.samples]
    if cfg.out and len(names) > 1:
        raise ValueError("out= names one metrics file: use it with a single samples= entry")
    data = instantiate(OmegaConf.load(run_dir / CONFIG_FILE).data) if is_run else None
    own = data is not None and has_metrics(data)
    options = OmegaConf.to_container(cfg.options, resolve=True) if cfg.options else {}
    suite = _suite(cfg) if metrics else None
    results, folders = {}, {}
    for name in names:
        path = run_dir / name
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: run `python scripts/sample.py run_dir={run_dir}` first"
            )
        result = dict(evaluate(data, path, **options)) if own else {}
        if suite is not None:
            result.update(suite.evaluate(path, metrics, reference=cfg.reference))
        out = run_dir / (cfg.out or f"{path.stem}_metrics.json")
        atomic_write_json(out, result)
        results[path.stem] = result
        if path.is_dir():
            folders[path.stem] = path
        print(f"metrics of {path} -> {out}")
    if suite is not None and suite.cache.hits:
        print(f"features reused from {cfg.cache_dir}: {suite.cache.hits} file list(s)")
    print(format_table(data, results) if own and suite is None else format_text(results))
    if cfg.report:
        paths = write_outputs(run_dir, results, folders, cfg.report_pairs)
        print(f"table {paths['markdown']}, {paths['json']}; chart {paths['chart']}")
        print(f"report {paths['report'].resolve()}")


if __name__ == "__main__":
    main()
