"""Regenerate the Table-1-style toy ablation (paper Sec. 4.1) through the public scripts.

    python scripts/toy_table.py                # writes outputs/toy_table/{table.md, *.png}
    python scripts/toy_table.py train.steps=2000 num_samples=1000   # a quicker, rougher table
    python scripts/toy_table.py jobs=3 device=cuda     # variants in 3 parallel processes

For IND and OOD targets: train D with {L_D only, L_DSM only, both}, sample 4000 pairs each
(plus "no joint": the bases alone) with the run's joint scales (default ``auto``: the
L_DSM-optimal s* of held-out real pairs, shown in the table), evaluate against the exact target
density. Extra arguments are passed to every `scripts/train.py` call except `num_samples=` and
`jobs=`; `device=` also goes to `sample.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "outputs" / "toy_table"
VARIANTS = {  # name -> loss overrides
    "L_D only": ["loss.bce=true", "loss.lambda_dsm=0"],
    "L_DSM only": ["loss.bce=false", "loss.lambda_dsm=1.0"],
    "L_D + L_DSM": ["loss.bce=true", "loss.lambda_dsm=1.0"],
}
DATASETS = {"IND": "toy_ind", "OOD": "toy_ood"}


def run(script: str, *args: str) -> None:
    cmd = [sys.executable, str(ROOT / "scripts" / script), *args, "progress=false"]
    print("+", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def metrics(run_dir: Path, samples: str) -> dict:
    return json.loads((run_dir / f"{Path(samples).stem}_metrics.json").read_text())


def run_dir_of(data: str, variant: str) -> Path:
    return OUT / f"{data}_{variant.replace(' ', '').replace('+', '_')}"


def variant_runs(data: str, variant: str, loss: list[str], num: str, extra: list[str], first):
    """Train one variant, sample and evaluate it (and "no joint" with the first variant)."""
    run_dir = run_dir_of(data, variant)
    device = [a for a in extra if a.startswith("device=")]
    run("train.py", "base=toy", f"data={data}", f"run_dir={run_dir}", *loss, *extra)
    if first:  # "no joint": the same bases, no discriminator
        run("sample.py", f"run_dir={run_dir}", f"num_samples={num}", "guided=false", *device)
        run("evaluate.py", f"run_dir={run_dir}", "samples=samples_nojoint.npz")
    run("sample.py", f"run_dir={run_dir}", f"num_samples={num}", *device)
    run("evaluate.py", f"run_dir={run_dir}")


def main(argv: list[str]) -> None:
    num = next((a.split("=", 1)[1] for a in argv if a.startswith("num_samples=")), "4000")
    jobs = int(next((a.split("=", 1)[1] for a in argv if a.startswith("jobs=")), "1"))
    extra = [a for a in argv if not a.startswith(("num_samples=", "jobs="))]
    start = time.time()
    todo = [
        (data, variant, loss, num, extra, i == 0)
        for data in DATASETS.values()
        for i, (variant, loss) in enumerate(VARIANTS.items())
    ]
    variant_runs(*todo[0])  # first alone: it trains (and caches) the shared 1-D base
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(lambda job: variant_runs(*job), todo[1:]))
    minutes = (time.time() - start) / 60
    rows = collect(int(num))
    table = render(rows, minutes, argv)
    (OUT / "table.md").write_text(table)
    figure()
    print(table)


def collect(num: int) -> list:
    """Rows of the table from the runs' metrics, with ground-truth samples for reference."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mmdisco.metrics.toy import toy_metrics

    rows = []
    for label, data in DATASETS.items():
        first = run_dir_of(data, next(iter(VARIANTS)))
        target = instantiate(OmegaConf.load(first / "config.yaml").data).target
        gt = target.sample(num, torch.Generator().manual_seed(12345))
        rows.append((label, "GT samples", toy_metrics(gt, target)))
        rows.append((label, "no joint", metrics(first, "samples_nojoint.npz")))
        for variant in VARIANTS:
            run_dir = run_dir_of(data, variant)
            m = {**metrics(run_dir, "samples.npz"), "s*": joint_scales(run_dir)}
            rows.append((label, variant, m))
    return rows


def joint_scales(run_dir: Path) -> str:
    """The run's L_DSM-optimal scales s* (audio / video), as sampled with joint_scales=auto."""
    path = run_dir / "joint_scales.json"
    if not path.exists():
        return "-"
    doc = json.loads(path.read_text())
    return " / ".join(f"{doc[m]:.2f}" for m in ("audio", "video"))


def figure() -> None:
    """outputs/toy_table/toy_grid.png: rows IND / OOD, columns no joint and the three losses."""
    import numpy as np
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mmdisco.plots import toy_grid

    def load(path):
        with np.load(path) as f:
            return np.concatenate([f["audio"], f["video"]], axis=1)

    rows, targets = [], []
    for label, data in DATASETS.items():
        dirs = [run_dir_of(data, v) for v in VARIANTS]
        row = [(f"{label}: no joint", load(dirs[0] / "samples_nojoint.npz"))]
        row += [(f"{label}: {v}", load(d / "samples.npz")) for v, d in zip(VARIANTS, dirs)]
        rows.append(row)
        targets.append(instantiate(OmegaConf.load(dirs[0] / "config.yaml").data).target)
    toy_grid(OUT / "toy_grid.png", rows, targets)


def render(rows, minutes: float, argv: list[str]) -> str:
    lines = [
        "| target | method | NLL (exact) | NLL median | NLL (kernel 0.4) | within 3 std "
        "| peaks covered | s* (a / v) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, variant, m in rows:
        lines.append(
            f"| {label} | {variant} | {m['nll']:.2f} | {m['nll_median']:.2f} | "
            f"{m['nll_kernel0.4']:.2f} | {100 * m['precision']:.1f}% | "
            f"{m['peaks_covered']}/{m['num_peaks']} | {m.get('s*', '-')} |"
        )
    cmd = " ".join(["python scripts/toy_table.py", *argv])
    lines.append(f"\n`{cmd}`: {minutes:.1f} min on this machine.\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
