"""Class and onset distributions of guided pairs on the synthetic world (README, "Guidance that
aligns": agreement alone does not show whether guidance keeps the data's marginals).

    python scripts/marginal_counts.py outputs/study/demo/seed0 outputs/study/demo/seed1 \\
        outputs/study/demo/seed2 --oracle

    python scripts/marginal_counts.py outputs/study/nce32_pbce/seed0 --scale 10 10 1 1

For each run: 64 pairs (the guidance study's noise) guided by its D at its ``joint_scales``
(``auto``: ``joint_scales.json``; ``--scale``: one scale, or one per bucket of t, low t first),
decoded; prints the semantic / temporal agreement and how many have each class 0-3 (red, green,
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
from mmdisco.metrics.synthetic import clip_row, decoded_balance, summarize
from mmdisco.runs import load_run, resolve_joint_scales
from mmdisco.scale_search import decoded

sys.path.insert(0, str(Path(__file__).resolve().parent))
from guidance_study import sample_pairs  # noqa: E402  (same folder)


def marginal_counts(run, discriminator, scales, num: int) -> dict[str, str]:
    pairs = sample_pairs(run, discriminator, scales, num, "cpu")
    frames, waves = decoded(run.bases, pairs)
    fps, sr = run.bases.fps, run.bases.sample_rate
    rows = [clip_row(f, fps, w, sr, False) for f, w in zip(frames, waves)]
    s = summarize(rows)
    out = {"agreement": f"semantic {100 * s['semantic']:.1f}% temporal {100 * s['temporal']:.1f}%"}
    for m in ("video", "audio"):
        labels = Counter(r[f"{m}_label"] for r in rows)
        onsets = Counter(r[f"{m}_onset"] for r in rows)
        classes = [labels[k] for k in range(NUM_CLASSES)]
        balance = [decoded_balance(rows, m, f) for f in ("label", "onset")]
        out[m] = (f"class {classes} onset {[onsets[o] for o in ONSETS]} "
                  f"balance {balance[0]:.3f} / {balance[1]:.3f}")  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--num", type=int, default=64)
    ap.add_argument("--oracle", action="store_true", help="also the exact ratio at scale 1")
    ap.add_argument("--scale", type=float, nargs="+", default=None,
                    help="joint scale(s) instead of the run's: one, or one per t bucket")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"counts per class 0-{NUM_CLASSES - 1} and onset frame {list(ONSETS)}: video | audio")
    for r in a.runs:
        run = load_run(r)
        if a.scale is None:
            scales = resolve_joint_scales(run.cfg.guidance.joint_scales, r)
        else:
            scales = a.scale[0] if len(a.scale) == 1 else dict.fromkeys(("audio", "video"), a.scale)
        c = marginal_counts(run, run.discriminator, scales, a.num)
        print(f"{r}: {c['agreement']}; {c['video']} | {c['audio']}", flush=True)
    first = load_run(a.runs[0])
    c = marginal_counts(first, None, 0.0, a.num)
    print(f"unguided: {c['agreement']}; {c['video']} | {c['audio']}", flush=True)
    if a.oracle:
        c = marginal_counts(first, SyntheticOracle(first.bases), 1.0, a.num)
        print(f"oracle at scale 1: {c['agreement']}; {c['video']} | {c['audio']}", flush=True)


if __name__ == "__main__":
    main()
