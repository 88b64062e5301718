"""Regenerate the Table-1-style toy ablation (paper Sec. 4.1) through the public scripts.

    python scripts/toy_table.py                # writes outputs/toy_table/{table.md, *.png}
    python scripts/toy_table.py train.steps=2000 num_samples=1000   # a quicker, rougher table

For IND and OOD targets: train D with {L_D only, L_DSM only, both}, sample 4000 pairs each
(plus "no joint": the bases alone), evaluate against the exact target density.
Extra arguments are passed to every `scripts/train.py` call except `num_samples=`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

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


def main(argv: list[str]) -> None:
    num = next((a.split("=", 1)[1] for a in argv if a.startswith("num_samples=")), "4000")
    extra = [a for a in argv if not a.startswith("num_samples=")]
    rows, start = [], time.time()
    for label, data in DATASETS.items():
        for i, (variant, loss) in enumerate(VARIANTS.items()):
            run_dir = OUT / f"{data}_{variant.replace(' ', '').replace('+', '_')}"
            run("train.py", "base=toy", f"data={data}", f"run_dir={run_dir}", *loss, *extra)
            if i == 0:  # "no joint": the same bases, no discriminator
                run("sample.py", f"run_dir={run_dir}", f"num_samples={num}", "guided=false")
                run("evaluate.py", f"run_dir={run_dir}", "samples=samples_nojoint.npz")
                rows.append((label, "no joint", metrics(run_dir, "samples_nojoint.npz")))
            run("sample.py", f"run_dir={run_dir}", f"num_samples={num}")
            run("evaluate.py", f"run_dir={run_dir}")
            rows.append((label, variant, metrics(run_dir, "samples.npz")))
    minutes = (time.time() - start) / 60
    table = render(rows, minutes, argv)
    (OUT / "table.md").write_text(table)
    print(table)


def render(rows, minutes: float, argv: list[str]) -> str:
    lines = [
        "| target | method | NLL (exact) | NLL median | NLL (kernel 0.4) | within 3 std "
        "| peaks covered |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, variant, m in rows:
        lines.append(
            f"| {label} | {variant} | {m['nll']:.2f} | {m['nll_median']:.2f} | "
            f"{m['nll_kernel0.4']:.2f} | {100 * m['precision']:.1f}% | "
            f"{m['peaks_covered']}/{m['num_peaks']} |"
        )
    cmd = " ".join(["python scripts/toy_table.py", *argv])
    lines.append(f"\n`{cmd}`: {minutes:.1f} min on this machine.\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
