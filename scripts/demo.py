"""`make demo`: the main job on the embedded default, end to end through the public scripts.

Until the synthetic audio-video world has its trained base models (issue 5), the embedded
default is the paper's toy problem (Sec. 4.1), in-domain target: train the 1-D base (cached),
pre-sample fake pairs, train the discriminator with L_D + L_DSM, sample 4000 pairs with and
without guidance, and score both against the exact target density.

    python scripts/demo.py [extra train.py overrides]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from toy_table import metrics, run  # same folder

RUN = Path(__file__).resolve().parent.parent / "outputs" / "demo" / "toy_ind"


def main(extra: list[str]) -> None:
    start = time.time()
    run("train.py", "base=toy", "data=toy_ind", f"run_dir={RUN}", *extra)
    run("sample.py", f"run_dir={RUN}", "guided=false")
    run("evaluate.py", f"run_dir={RUN}", "samples=samples_nojoint.npz")
    run("sample.py", f"run_dir={RUN}")
    run("evaluate.py", f"run_dir={RUN}")
    rows = [
        ("no joint", metrics(RUN, "samples_nojoint.npz")),
        ("MMDisCo", metrics(RUN, "samples.npz")),
    ]
    print(f"\ntoy, in-domain target ({time.time() - start:.0f} s); figures in {RUN}")
    print(f"{'':>10} {'NLL':>8} {'median':>8} {'in 3 std':>9} {'peaks':>6}")
    for name, m in rows:
        print(
            f"{name:>10} {m['nll']:8.2f} {m['nll_median']:8.2f} {100 * m['precision']:8.1f}% "
            f"{m['peaks_covered']:>3}/{m['num_peaks']}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
