"""Score generated samples of a run against its data set's target.

    python scripts/evaluate.py run_dir=runs/toy_ind
    python scripts/evaluate.py run_dir=runs/toy_ind samples=samples_nojoint.npz

Prints the metrics and writes them as JSON beside the samples.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mmdisco.io import atomic_write_json
from mmdisco.runs import CONFIG_FILE


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(cfg.run_dir)
    path = run_dir / cfg.samples
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: run `python scripts/sample.py run_dir={run_dir}` first"
        )
    data = instantiate(OmegaConf.load(run_dir / CONFIG_FILE).data)
    metrics = data.evaluate(path)
    out = run_dir / (cfg.out or f"{path.stem}_metrics.json")
    atomic_write_json(out, metrics)
    for k, v in metrics.items():
        print(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")


if __name__ == "__main__":
    main()
