"""Guidance study on the synthetic world (issue 10): one row = one D recipe over several seeds.

For each D seed: train a run (``train.py experiment=synthetic`` + the row's overrides; an
existing finished run is reused), read its held-out calibration (``joint_scales.json``: residual
/ base-noise ratio, L_DSM-optimal scale s*, cosine), sample the same 64 pairs guided at each
joint scale (a number, or ``auto`` = s*) and score them with the world's decoders (in memory:
the latents are decoded to frames and waveforms, not written as mp4). Unguided pairs (the same
initial noise, no D) are scored once per sampler. Prints a table with mean +- std over seeds and
writes ``<out>/<name>/results.json``.

    python scripts/guidance_study.py --rows demo sum --seeds 0 1 2 --scales 1 10 auto
    python scripts/guidance_study.py --rows all --jobs 12 --device cuda      # the README table
    python scripts/guidance_study.py --rows mine -- loss.t_power=1            # extra overrides

A row is a named recipe (``ROWS``: train.py overrides on top of ``experiment=synthetic``); extra
overrides after ``--`` apply to every row (a row name not in ``ROWS`` runs with them alone).
With ``--jobs N`` the rows run in N processes after one preparation step (data, latents, fakes,
unguided pairs), and ``<out>/table.md`` collects them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from mmdisco.guidance import JointGuidance
from mmdisco.runs import load_run, resolve_joint_scales, sample_in_batches
from mmdisco.sampling import build_sampler
from mmdisco.scale_search import synthetic_summary

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("semantic", "temporal", "semantic_and_temporal", "video_valid", "audio_valid",
           "class_balance", "onset_balance")
NEG = "loss.negatives={mismatch: 0.25, shift: 0.25}"
POOLED = "discriminator.fusion.kind=framewise_pooled"
# the demo recipe before this wave's fix (stop 10): the paper's L_D + L_DSM (mean), t_power 2,
# 800 steps. The rows below it are the candidates measured on top of it (README tables).
PAPER = ["loss.bce=true", "loss.lambda_dsm=1.0", "loss.contrastive=null", "loss.t_power=2",
         "train.steps=800", "train.lr_decay=null", "calibration.per_bucket=false",
         "calibration.scorer=synthetic_agreement"]
NCE = "loss.contrastive={weight: 1, group: 32}"
PBCE = "loss.contrastive={weight: 1, group: 32, pair_bce: 1}"
# stop 11's demo recipe: the batch InfoNCE alone, constant lr, 3000 steps, one joint scale by
# decoded agreement alone (it herded the guided pairs into a few classes: README)
STOP11 = ["loss.contrastive={weight: 1, group: 32, pair_bce: 0}", "train.steps=3000",
          "train.lr_decay=null", "calibration.per_bucket=false",
          "calibration.scorer=synthetic_agreement"]
ROWS = {  # name -> train.py overrides on top of experiment=synthetic (the candidates of issue 10)
    "demo": [],  # the shipped recipe (= nce32_pbce_cos_5k)
    "stop11_infonce": STOP11,  # stop 11's demo: InfoNCE alone, constant lr, agreement search
    "paper_loss": PAPER,  # the demo of stop 10
    "dsm_sum": [*PAPER, "loss.dsm_reduction=sum"],
    "uniform_t": [*PAPER, "loss.t_power=1"],
    "negatives": [*PAPER, NEG],
    "pooled_head": [*PAPER, POOLED],
    "wide": [*PAPER, "discriminator.channels=32"],
    "long": [*PAPER, "train.steps=2400"],
    "neg_pooled": [*PAPER, NEG, POOLED],
    "neg_pooled_sum": [*PAPER, NEG, POOLED, "loss.dsm_reduction=sum"],
    "neg_pooled_uniform_long": [*PAPER, NEG, POOLED, "loss.t_power=1", "train.steps=2400"],
    "neg_pooled_sum_uniform_long": [
        *PAPER, NEG, POOLED, "loss.dsm_reduction=sum", "loss.t_power=1", "train.steps=2400"
    ],
    "mismatch_only": [*PAPER, "loss.negatives={mismatch: 0.5}", POOLED],
    "neg_pooled_high_t": [*PAPER, NEG, POOLED, "loss.t_power=0.5"],
    "neg_pooled_per_bucket": [*PAPER, NEG, POOLED, "calibration.per_bucket=true"],
    "neg_pooled_no_renoise": [*PAPER, NEG, POOLED, "sampler.joint_num_steps=1"],
    "x0_dsm": [*PAPER, "loss.dsm_weighting=x0"],
    "x0_dsm_uniform_t": [*PAPER, "loss.dsm_weighting=x0", "loss.t_power=1"],
    "paper_dsm_draws8": [*PAPER, "train.dsm_draws=8"],  # issue 14: precomputed L_DSM targets
    "paper_nce32": [*PAPER, NCE],  # + InfoNCE over the whole real batch (L_D kept)
    "paper_nce32_w10": [*PAPER, "loss.contrastive={weight: 10, group: 32}"],
    "paper_nce32_no_dsm": [*PAPER, NCE, "loss.lambda_dsm=0"],  # L_D + InfoNCE
    "nce32_dsm": [*PAPER, NCE, "loss.bce=false"],  # InfoNCE + L_DSM, no L_D
    # stop 12: InfoNCE + the balanced BCE over the same 32 x 32 pairs (pins D's marginal offsets)
    "nce32_pbce": [*STOP11, PBCE, "calibration.scorer=synthetic", "calibration.per_bucket=true"],
    "nce32_pbce_cos": [*STOP11, PBCE, "train.lr_decay=cosine", "calibration.scorer=synthetic",
                       "calibration.per_bucket=true"],
    "nce32_pbce_cos_5k": [PBCE, "train.lr_decay=cosine", "train.steps=5000"],  # = demo
    "nce32_pbce_ema": [*STOP11, PBCE, "train.ema_decay=0.999", "calibration.scorer=synthetic"],
    "nce32_pbce5_ema": [*STOP11, "loss.contrastive={weight: 1, group: 32, pair_bce: 5}",
                        "train.ema_decay=0.999", "calibration.scorer=synthetic"],
}  # fmt: skip


def train_run(run_dir: Path, seed: int, overrides: list[str], device: str, threads: int | None):
    from mmdisco.training import train

    if (run_dir / "discriminator.safetensors").exists() and (run_dir / "train_log.csv").exists():
        return
    args = ["experiment=synthetic", f"seed={seed}", f"run_dir={run_dir}", f"device={device}"]
    if threads:
        args.append(f"threads={threads}")
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=args + overrides)
    train(cfg)


def score(bases, samples, av_align: bool) -> dict:
    """Decoder metrics of sampled latents (decoded in memory)."""
    return synthetic_summary(bases, samples, av_align)


def sample_pairs(run, discriminator, scales, num, device, progress=False):
    """``num`` pairs from the run's sampler settings (seed 0), guided when D is given."""
    model = run.bases if discriminator is None else JointGuidance(run.bases, discriminator, scales)
    sampler = build_sampler(model, run.cfg.sampler)
    return sample_in_batches(sampler, run.bases, num, num, 0, device, progress)


AV_KEYS = ("av_align", "av_audio_peaks", "av_video_peaks")  # not fractions: printed as they are


def mean_std(values, key: str = "") -> str:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    f = 1 if key in AV_KEYS else 100
    return (
        f"{f * v.mean():.{3 if f == 1 else 1}f} +- {f * v.std():.{3 if f == 1 else 1}f}"
        if len(v)
        else "-"
    )


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", nargs="+", default=["demo"], help=f"'all' or of {list(ROWS)}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--scales", nargs="+", default=["1", "10", "auto"])
    ap.add_argument("--num", type=int, default=64, help="pairs sampled per scale")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "study"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=1, help="rows run in this many processes")
    ap.add_argument("--av-align", action="store_true", help="also AV-Align (slower, needs cv2)")
    ap.add_argument("--tag", default="", help="results go to seed*/study-<tag>.json (reruns of a "
                    "trained row with other scales / sizes keep the first results)")  # fmt: skip
    ap.add_argument("overrides", nargs="*", help="train.py overrides added to every row")
    a = ap.parse_args()
    if a.rows == ["all"]:
        a.rows = list(ROWS)
    return a


def main() -> None:
    a = parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.jobs > 1 and len(a.rows) > 1:
        return run_parallel(a)
    for name in a.rows:
        study_row(a, name, ROWS.get(name, []) + a.overrides)


def run_parallel(a) -> None:
    """Prepare once (data, latent cache, fakes, unguided pairs), then one process per row."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    prep = Path(a.out) / "_prep"
    train_run(prep, 0, a.overrides + ["train.steps=1", "progress=false"], a.device, a.threads)
    unguided(a, load_run(prep, a.device))
    common = ["--scales", *a.scales, "--num", str(a.num)]
    common += ["--out", a.out, "--device", a.device, "--jobs", "1"]
    common += ["--threads", str(a.threads)] if a.threads else []
    common += ["--av-align"] if a.av_align else []
    common += ["--tag", a.tag] if a.tag else []

    def one(job):
        name, seed = job
        log = Path(a.out) / f"{name}-seed{seed}.log"
        cmd = [sys.executable, __file__, "--rows", name, "--seeds", str(seed), *common]
        with open(log, "w") as f:
            rc = subprocess.run([*cmd, "--", *a.overrides], stdout=f, stderr=subprocess.STDOUT)
        return job, rc.returncode

    jobs = [(name, seed) for seed in a.seeds for name in a.rows]
    with ThreadPoolExecutor(a.jobs) as pool:
        for (name, seed), rc in pool.map(one, jobs):
            print(f"{name} seed {seed}: {'ok' if rc == 0 else f'FAILED (rc {rc})'}", flush=True)
    tables = [table(collect(Path(a.out), name, a.tag)) for name in a.rows]
    (Path(a.out) / "table.md").write_text("\n\n".join(tables) + "\n")
    print("\n\n".join(tables))


def unguided(a, run) -> dict:
    """Scores of the pairs the bases make alone from the study's noise (once per sampler)."""
    settings = build_sampler(run.bases, run.cfg.sampler).solver_settings
    settings["joint_num_steps"] = run.cfg.sampler.joint_num_steps
    path = Path(a.out) / f"unguided-{_key(settings)}-{a.num}.json"
    if not path.exists():
        t0 = time.time()
        pairs = sample_pairs(run, None, 0.0, a.num, a.device)
        res = {**score(run.bases, pairs, a.av_align), "sample_s": time.time() - t0}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res))
        tmp.replace(path)
    return json.loads(path.read_text())


def collect(out: Path, name: str, tag: str = "") -> dict:
    """A row's results over the seeds that finished (``<out>/<name>/seed*/study[-tag].json``)."""
    file = f"study-{tag}.json" if tag else "study.json"
    rows = [json.loads(p.read_text()) for p in sorted((out / name).glob(f"seed*/{file}"))]
    return {
        "name": name,
        "overrides": rows[0]["overrides"] if rows else [],
        "seeds": {r["seed"]: r for r in rows},
    }


def study_row(a, name: str, overrides: list[str]) -> None:
    out = Path(a.out) / name
    for seed in a.seeds:
        start = time.time()
        run_dir = out / f"seed{seed}"
        train_run(run_dir, seed, overrides + ["progress=false"], a.device, a.threads)
        train_s = time.time() - start
        run = load_run(run_dir, a.device)
        cal = json.loads((run_dir / "joint_scales.json").read_text())
        row = {"seed": seed, "overrides": overrides, "train_s": train_s, "calibration": cal}
        row.update(scales={}, unguided=unguided(a, run))
        for s in a.scales:
            scales = resolve_joint_scales(s if s == "auto" else float(s), run_dir)
            t0 = time.time()
            pairs = sample_pairs(run, run.discriminator, scales, a.num, a.device)
            res = {**score(run.bases, pairs, a.av_align), "sample_s": time.time() - t0}
            row["scales"][s] = {"joint_scales": scales, **res}
        name_json = f"study-{a.tag}.json" if a.tag else "study.json"
        (run_dir / name_json).write_text(json.dumps(row, indent=1, default=float))
        print(summary_line(name, row), flush=True)
    print(table(collect(Path(a.out), name, a.tag)))


def _key(kwargs) -> str:
    return "-".join(f"{k}{v}" for k, v in sorted(kwargs.items()))


def summary_line(name, row) -> str:
    d = row["calibration"]["diagnostics"]
    parts = [f"{name}: res/eps {d['audio']['res_ratio']:.4f}/{d['video']['res_ratio']:.4f}"]
    parts.append(f"s* {row['calibration']['audio']}/{row['calibration']['video']}")
    for s, r in row["scales"].items():
        parts.append(f"@{s}: {100 * r['semantic']:.0f}/{100 * r['temporal']:.0f}")
    return "  ".join(parts)


def table(results) -> str:
    rows = list(results["seeds"].values())
    if not rows:
        return f"row {results['name']}: no seed finished"
    scales = list(rows[0]["scales"])
    lines = [f"row {results['name']} ({len(rows)} seeds) overrides {results['overrides']}"]

    def cal(m, key):
        return [r["calibration"]["diagnostics"][m][key] for r in rows]

    for m in ("audio", "video"):
        s_star = [r["calibration"][m] for r in rows]
        ratio = cal(m, "res_ratio")
        lines.append(
            f"  {m}: res/eps {np.mean(ratio):.4f} +- {np.std(ratio):.4f}"
            f"  s* {np.mean(s_star):.2f} +- {np.std(s_star):.2f}"
            f"  cos {np.mean(cal(m, 'cosine')):.3f}"
        )
    ung = rows[0]["unguided"]
    keys = METRICS + tuple(k for k in AV_KEYS if k in ung)
    lines.append("  unguided: " + "  ".join(f"{k} {mean_std([ung.get(k)], k)}" for k in keys))
    for s in scales:
        cells = [f"{k} {mean_std([r['scales'][s].get(k) for r in rows], k)}" for k in keys]
        lines.append(f"  scale {s}: " + "  ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
