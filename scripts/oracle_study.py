"""What a trained synthetic-world D knows against the world's exact density ratio (issue 10).

    python scripts/oracle_study.py outputs/study/demo/seed0 outputs/study/demo/seed1
    python scripts/oracle_study.py RUN ... --guided 1 --num 64     # + the oracle guiding at scale 1

``SyntheticOracle`` (``mmdisco/discriminator/synthetic_oracle.py``) is the exact log density
ratio of the synthetic world, the D the method asks for. For the oracle and each run's D, at
each t of ``--ts``, on freshly rendered clips noised with shared noise:

- ``swap``: P(logit(real pair) > logit(same clip with another class's tone, same onset));
- ``shift``: the same against the tone moved to another onset (same class);
- ``cos`` / ``gain``: on independent pairs (each video with the next clip's audio, where
  guidance has to act), the cosine between D's residual r_D = -sigma grad logit and the
  oracle's r_O (the true joint correction), and gain = <r_O, r_D> / ||r_D||^2, the joint scale
  that maps r_D best onto r_O (audio / video); the JSON also has both on the real pairs
  (``*_real``), where the true correction is small.

Then, per run, D's mean logit on pairs of every (video class, audio class) with the same onset
at t = 50 (which class pairing D has learned). With ``--guided S ...`` it also samples ``--num``
pairs with the oracle guiding at joint scale S (the first run's sampler and bases) and scores
them with the world's decoders. Results go to ``--out`` (``oracle_study.json``) and are printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mmdisco.data.synthetic import (
    NUM_CLASSES,
    ONSETS,
    render_audio,
    render_video,
    sample_clip_params,
)
from mmdisco.discriminator.synthetic_oracle import SyntheticOracle
from mmdisco.guidance import residual
from mmdisco.runs import load_run

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from guidance_study import sample_pairs, score  # noqa: E402  (same folder)


def world_batch(bases, n: int, seed: int):
    """Clean latents of n real pairs, their class-swapped and onset-shifted audio."""
    rng = np.random.default_rng(seed)
    params = [sample_clip_params(rng) for _ in range(n)]
    k2 = [int((k + 1 + rng.integers(NUM_CLASSES - 1)) % NUM_CLASSES) for k, _, _ in params]
    o2 = [int(rng.choice([x for x in ONSETS if x != o])) for _, o, _ in params]
    enc_a = bases["audio"].encode
    video = bases["video"].encode(np.stack([render_video(k, o, c) for k, o, c in params]))
    audio = enc_a(np.stack([render_audio(k, o) for k, o, _ in params]))
    swap = enc_a(np.stack([render_audio(k2[i], params[i][1]) for i in range(n)]))
    shift = enc_a(np.stack([render_audio(params[i][0], o2[i]) for i in range(n)]))
    return audio, video, swap, shift


def probe(ds: dict, bases, n: int, ts: list[int], seed: int = 0) -> dict:
    """Per D and t: swap / shift accuracy, and (learned Ds) cos and gain against the oracle."""
    audio, video, swap, shift = world_batch(bases, n, seed)
    sch = bases.schedules
    g = torch.Generator().manual_seed(seed)
    out = {name: {} for name in ds}
    for t_value in ts:
        t = torch.full((n,), t_value)
        na, nv = torch.randn(audio.shape, generator=g), torch.randn(video.shape, generator=g)
        v_t = sch["video"].add_noise(video, nv, t)
        xs = {"audio": sch["audio"].add_noise(audio, na, t), "video": v_t}
        ind = {"audio": xs["audio"].roll(1, 0), "video": v_t}  # independent: another clip's audio
        res = {}
        for name, d in ds.items():
            with torch.no_grad():
                lr = d(xs["audio"], v_t, t).squeeze(-1)
                ls = d(sch["audio"].add_noise(swap, na, t), v_t, t).squeeze(-1)
                lo = d(sch["audio"].add_noise(shift, na, t), v_t, t).squeeze(-1)
            res[name], _ = residual(d, xs, t, sch)
            res[name, "ind"], _ = residual(d, ind, t, sch)
            out[name][t_value] = {
                "swap": (lr > ls).float().mean().item(),
                "shift": (lr > lo).float().mean().item(),
            }
        for name in ds:
            if name == "oracle":
                continue
            for m in ("audio", "video"):
                for key, suffix in ((name, "_real"), ((name, "ind"), "")):
                    ref = "oracle" if suffix else ("oracle", "ind")
                    r_d, r_o = res[key][m].flatten(1).double(), res[ref][m].flatten(1).double()
                    dot = (r_d * r_o).sum()
                    cos = dot / (r_d.norm() * r_o.norm()).clamp_min(1e-30)
                    out[name][t_value][f"cos_{m}{suffix}"] = cos.item()
                    gain = dot / (r_d**2).sum().clamp_min(1e-30)
                    out[name][t_value][f"gain_{m}{suffix}"] = gain.item()
    return out


def class_pair_logits(d, bases, t_value: int = 50, per_cell: int = 32, seed: int = 0):
    """(4, 4) mean logit of D on pairs with video class i, audio class j and the same onset
    (random centres) at step ``t_value``: what class pairing D has learned."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    sch, t = bases.schedules, torch.full((per_cell,), t_value)
    out = np.zeros((NUM_CLASSES, NUM_CLASSES))
    for kv in range(NUM_CLASSES):
        for ka in range(NUM_CLASSES):
            clips = [sample_clip_params(rng) for _ in range(per_cell)]  # onsets and centres
            v = bases["video"].encode(np.stack([render_video(kv, o, c) for _, o, c in clips]))
            a = bases["audio"].encode(np.stack([render_audio(ka, o) for _, o, _ in clips]))
            a_t = sch["audio"].add_noise(a, torch.randn(a.shape, generator=g), t)
            v_t = sch["video"].add_noise(v, torch.randn(v.shape, generator=g), t)
            with torch.no_grad():
                out[kv, ka] = d(a_t, v_t, t).float().mean().item()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+", help="training run directories of the synthetic world")
    ap.add_argument("--ts", type=int, nargs="+", default=[50, 250, 400, 550, 700, 850])
    ap.add_argument("--n", type=int, default=128, help="clips per t for the probe")
    ap.add_argument("--guided", type=float, nargs="*", default=[], help="oracle joint scales")
    ap.add_argument("--num", type=int, default=64, help="pairs sampled per oracle scale")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "oracle_study"))
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    runs = {str(r): load_run(r) for r in a.runs}
    first = next(iter(runs.values()))
    oracle = SyntheticOracle(first.bases)
    ds = {"oracle": oracle, **{name: r.discriminator for name, r in runs.items()}}
    result = {"probe": probe(ds, first.bases, a.n, a.ts), "guided": {}}
    print("t     " + "  ".join(f"{n[-28:]:>28}" for n in ds))
    print("      " + "  ".join(f"{'swap shift cos_a/v gain_a/v':>28}" for _ in ds))
    for t_value in a.ts:
        cells = []
        for name in ds:
            r = result["probe"][name][t_value]
            cell = f"{r['swap']:.2f} {r['shift']:.2f}"
            if "cos_audio" in r:
                cell += f" {r['cos_audio']:+.2f}/{r['cos_video']:+.2f}"
                cell += f" {r['gain_audio']:.1f}/{r['gain_video']:.1f}"
            cells.append(f"{cell:>28}")
        print(f"{t_value:4d}  " + "  ".join(cells), flush=True)
    print("\nmean logit at t = 50, same onset (rows: video class, columns: audio class)")
    result["class_pair_logits"] = {}
    for name, r in runs.items():
        m = class_pair_logits(r.discriminator, first.bases)
        result["class_pair_logits"][name] = m.tolist()
        print(name + "\n" + np.array2string(m, precision=1, suppress_small=True))
    for s in a.guided:
        t0 = time.time()
        pairs = sample_pairs(first, oracle, s, a.num, "cpu")
        res = {**score(first.bases, pairs, False), "sample_s": time.time() - t0}
        result["guided"][str(s)] = res
        pct = {k: f"{100 * res[k]:.1f}%" for k in ("semantic", "temporal", "video_valid")}
        print(f"oracle at joint scale {s}: semantic {pct['semantic']}, temporal "
              f"{pct['temporal']}, valid video {pct['video_valid']} ({res['sample_s']:.0f} s)",
              flush=True)  # fmt: skip
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "oracle_study.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / "oracle_study.json")


if __name__ == "__main__":
    main()
