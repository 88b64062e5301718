"""Per-class offsets of a synthetic-world D (README, "Guidance that aligns": why guidance herds).

    python scripts/class_offsets.py outputs/study/demo/seed0 outputs/demo --n 96

For the exact log density ratio f* = log q(a, v) / (q(a) q(v)), E_v[exp f*(a, v)] = 1 for every
audio a (and E_a for every video): its offset c(a) = log mean_j exp f(a, v_j) over the real
videos v_j is 0. Guidance at joint scale s tilts the bases' joint by exp(s f), so a class whose
offset (or whose true pairs' logit) sits higher than the others' is favoured by about
exp(s x the difference). For each run and each t of ``--ts``: n rendered clips noised at t
(shared noise), D's n x n logits (audio i, video j), and per class of the clip the mean offset
of its audio, of its video, and the mean logit of its true pair. Symmetric InfoNCE leaves the
offsets free (each softmax ignores one of them); ``loss.contrastive.pair_bce`` pins them.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from mmdisco.data.synthetic import NUM_CLASSES, render_audio, render_video, sample_clip_params
from mmdisco.loss import group_pairs
from mmdisco.runs import load_run


def class_offsets(run, n: int, ts: list[int], seed: int = 0) -> dict[int, dict[str, list]]:
    bases, d = run.bases, run.discriminator
    rng = np.random.default_rng(seed)
    params = [sample_clip_params(rng) for _ in range(n)]
    cls = torch.as_tensor([k for k, _, _ in params])
    video = bases["video"].encode(np.stack([render_video(k, o, c) for k, o, c in params]))
    audio = bases["audio"].encode(np.stack([render_audio(k, o) for k, o, _ in params]))
    g = torch.Generator().manual_seed(seed)
    ia, iv = group_pairs(n, n)
    out = {}
    for t_value in ts:
        t = torch.full((n,), t_value)
        a_t = bases.schedules["audio"].add_noise(audio, torch.randn(audio.shape, generator=g), t)
        v_t = bases.schedules["video"].add_noise(video, torch.randn(video.shape, generator=g), t)
        with torch.no_grad():
            logits = d(a_t, v_t, t, None, pairs=(ia, iv)).float().view(n, n)
        c_a = torch.logsumexp(logits, 1) - math.log(n)
        c_v = torch.logsumexp(logits, 0) - math.log(n)
        per = {"audio": c_a, "video": c_v, "true pair": logits.diag()}
        out[t_value] = {
            k: [v[cls == j].mean().item() for j in range(NUM_CLASSES)] for k, v in per.items()
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+", help="synthetic-world run directories")
    ap.add_argument("--n", type=int, default=96, help="rendered clips per t")
    ap.add_argument("--ts", type=int, nargs="+", default=[100, 250, 400, 550, 700])
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print("per class red / green / blue / yellow: offset of the audio | of the video | true pair")
    for r in a.runs:
        print(r)
        for t_value, row in class_offsets(load_run(r), a.n, a.ts).items():
            cells = [" ".join(f"{x:+.2f}" for x in row[k]) for k in row]
            print(f"  t={t_value:3d}  " + "  |  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
