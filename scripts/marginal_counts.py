"""Class and onset distributions of guided pairs on the synthetic world (README, "Guidance that
aligns": agreement alone does not show whether guidance keeps the data's marginals).

    python scripts/marginal_counts.py outputs/study/demo/seed0 outputs/study/demo/seed1 \\
        outputs/study/demo/seed2 --oracle

For each run: 64 pairs (the guidance study's noise) guided by its D at its ``joint_scales``
(``auto``: ``joint_scales.json``), decoded; prints how many have each class 0-3 (red, green,
blue, yellow) and start at each onset frame 1-6, by the video and the audio decoder. The first
run's bases also give the unguided counts and, with ``--oracle``, those of the exact density
ratio at scale 1. The world's classes and onsets are uniform; ``balance`` is the normalised
entropy of the decoded classes (onsets), 1 for an even spread (``mmdisco.metrics.synthetic``).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch

from mmdisco.data.synthetic import NUM_CLASSES, ONSETS
from mmdisco.discriminator.synthetic_oracle import SyntheticOracle
from mmdisco.metrics.synthetic import clip_row, normalised_entropy
from mmdisco.runs import load_run, resolve_joint_scales
from mmdisco.scale_search import decoded

sys.path.insert(0, str(Path(__file__).resolve().parent))
from guidance_study import sample_pairs  # noqa: E402  (same folder)


def marginal_counts(run, discriminator, scales, num: int) -> dict[str, list[int]]:
    pairs = sample_pairs(run, discriminator, scales, num, "cpu")
    frames, waves = decoded(run.bases, pairs)
    fps, sr = run.bases.fps, run.bases.sample_rate
    rows = [clip_row(f, fps, w, sr, False) for f, w in zip(frames, waves)]
    out = {}
    for m in ("video", "audio"):
        labels = Counter(r[f"{m}_label"] for r in rows)
        onsets = Counter(r[f"{m}_onset"] for r in rows)
        classes = [labels[k] for k in range(NUM_CLASSES)]
        valid = [r for r in rows if r[f"{m}_valid"]]
        cb = normalised_entropy([r[f"{m}_label"] for r in valid], NUM_CLASSES)
        ob = normalised_entropy([r[f"{m}_onset"] for r in valid], len(ONSETS))
        out[m] = (f"class {classes} onset {[onsets[o] for o in ONSETS]} "
                  f"balance {cb:.3f} / {ob:.3f}")  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--num", type=int, default=64)
    ap.add_argument("--oracle", action="store_true", help="also the exact ratio at scale 1")
    ap.add_argument("--scale", type=float, default=None, help="a joint scale instead of the run's")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"counts per class 0-{NUM_CLASSES - 1} and onset frame {list(ONSETS)}: video | audio")
    for r in a.runs:
        run = load_run(r)
        scales = a.scale if a.scale is not None else run.cfg.guidance.joint_scales
        scales = resolve_joint_scales(scales, r)
        c = marginal_counts(run, run.discriminator, scales, a.num)
        print(f"{r}: {c['video']} | {c['audio']}", flush=True)
    first = load_run(a.runs[0])
    c = marginal_counts(first, None, 0.0, a.num)
    print(f"unguided: {c['video']} | {c['audio']}", flush=True)
    if a.oracle:
        c = marginal_counts(first, SyntheticOracle(first.bases), 1.0, a.num)
        print(f"oracle at scale 1: {c['video']} | {c['audio']}", flush=True)


if __name__ == "__main__":
    main()
