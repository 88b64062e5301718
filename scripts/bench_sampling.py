"""Cost of guided sampling vs the bases alone (paper A.9, Table 11: guidance adds 10-22%; this
project's target: a guided step costs at most 1.05x an unguided one).

    python scripts/bench_sampling.py --device cuda                   # full size, the GPU check
    OMP_NUM_THREADS=1 python scripts/bench_sampling.py --width-divisor 8 --threads 1 \\
        --batches 1 --e2e-steps 3                                    # CPU, widths / 8

Per configuration (base pair x batch x dtype), in one run and on the same inputs:

- unguided step: both bases with classifier-free guidance (cond + uncond in one batched
  forward each), i.e. ``BenchBases.predict_noise``, what one solver step costs without D;
- guided step: ``JointGuidance(bases, D).predict_noise``: the same plus D's forward and input
  gradient, D's own CFG branches batched in one pass (``mmdisco.guidance``);
- D alone: ``JointGuidance.residuals`` (D's forward + input gradient, CFG branches batched),
  what guidance adds; 1 + D / unguided estimates the ratio with one noisy timing fewer;
- their ratio, and with ``--compile`` the guided step with ``torch.compile(D)`` (forward and
  the single backward of the input gradient are compiled; sampling needs no double backward);
- end to end: ``JointSampler`` with DPM-Solver++ (2M) for ``--e2e-steps`` steps (default 50,
  the paper's), without and with D: wall time of one full sampling run each.

Bases and D: ``bench_models.py`` (random-init, the real architectures at ``--width-divisor``).
bf16 runs under ``torch.autocast`` (bases and D alike). CUDA graphs are not offered: they are
untested without a GPU (README, "Performance").
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from bench_models import (  # same folder: the shared base / D builders and the timer
    SHAPES,
    build_bases,
    build_discriminator,
    make_batch,
    num_params,
    timed,
)

from mmdisco.guidance import JointGuidance
from mmdisco.sampling import JointSampler

PAPER = "guidance adds 10-22% (paper A.9, Table 11); target: guided / unguided <= 1.05"


def step_fn(model, xs, t, conds, precision):
    def step():
        with precision():
            model.predict_noise(xs, t, conds)

    return step


def sample_seconds(model, batch, conds, steps, device, precision) -> float:
    sampler = JointSampler(model, solver="dpmpp", num_steps=steps, order=2)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    with precision():
        sampler.sample(batch, conds, torch.Generator(device).manual_seed(0), device=device)
    sync()
    return time.perf_counter() - start


def bench(pair: str, batch: int, dtype: str, args, device) -> dict:
    torch.manual_seed(0)
    k = args.width_divisor
    bases = build_bases(pair, k).to(device).eval().requires_grad_(False)
    disc = build_discriminator(pair, k).to(device).eval().requires_grad_(False)
    xs, _, conds = make_batch(pair, batch, device, guidance_scale=args.cfg_scale)
    t = torch.full((batch,), 500, device=device, dtype=torch.long)

    def precision():
        if dtype == "bf16":
            return torch.autocast(device.type, torch.bfloat16)
        return contextlib.nullcontext()

    guided = JointGuidance(bases, disc, joint_scales=1.0)
    reps, warm = args.repeats, args.warmup
    row = {"pair": pair, "batch": batch, "dtype": dtype, "D_M": num_params(disc)}
    row["unguided"] = timed(step_fn(bases, xs, t, conds, precision), device, reps, warm)
    row["guided"] = timed(step_fn(guided, xs, t, conds, precision), device, reps, warm)

    def d_only():  # what guidance adds: D's forward + input gradient, its CFG batched
        with precision():
            guided.residuals(xs, t, conds)

    row["d_only"] = timed(d_only, device, reps, warm)
    if args.compile:
        compiled = JointGuidance(bases, torch.compile(disc), joint_scales=1.0)
        start = time.perf_counter()
        step_fn(compiled, xs, t, conds, precision)()  # compilation
        row["compile_s"] = time.perf_counter() - start
        row["guided_compiled"] = timed(step_fn(compiled, xs, t, conds, precision), device, reps,
                                       warm)  # fmt: skip
    if args.e2e_steps:
        n = args.e2e_steps
        row["e2e_unguided"] = sample_seconds(bases, batch, conds, n, device, precision)
        row["e2e_guided"] = sample_seconds(guided, batch, conds, n, device, precision)
    return row


def report(row: dict, e2e_steps: int) -> None:
    u, g = row["unguided"], row["guided"]
    print(f"\n{row['pair']}, batch {row['batch']}, {row['dtype']} (D {row['D_M']:.1f}M)")
    print(f"  unguided step (bases + CFG)      {u:9.3f} s")
    print(f"  guided step (+ D fwd + input grad) {g:7.3f} s   guided / unguided = {g / u:.3f}")
    d = row["d_only"]
    print(f"  D alone (fwd + input grad, CFG)  {d:9.3f} s   1 + D / unguided = {1 + d / u:.3f}"
          "   (the same ratio, less noisy: one timing fewer)")  # fmt: skip
    if "guided_compiled" in row:
        c = row["guided_compiled"]
        print(f"  guided step, torch.compile(D)    {c:9.3f} s   guided / unguided = {c / u:.3f}"
              f"   (compiling took {row['compile_s']:.1f} s)")  # fmt: skip
    if e2e_steps:
        eu, eg = row["e2e_unguided"], row["e2e_guided"]
        print(f"  {e2e_steps} DPM-Solver++ steps: without D {eu:.2f} s, with D {eg:.2f} s "
              f"(x{eg / eu:.3f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 1])
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=["fp32", "bf16"],
        default=None,
        help="default: fp32 bf16 (bf16 only where the device supports it)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="default: 10 CUDA, 2 CPU")
    parser.add_argument("--warmup", type=int, default=None, help="default: 3 CUDA, 1 CPU")
    parser.add_argument(
        "--width-divisor",
        type=int,
        default=1,
        choices=[1, 2, 4, 8],
        help="divide every channel width (bases and D) to fit a CPU",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--cfg-scale", type=float, default=7.5, help="the bases' CFG scale")
    parser.add_argument(
        "--e2e-steps",
        type=int,
        default=50,
        help="DPM-Solver++ steps of the end-to-end runs (0: skip them)",
    )
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(D)")
    args = parser.parse_args()  # fmt: skip
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (10 if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    if args.dtypes is None:
        bf16 = torch.cuda.is_bf16_supported() if cuda else True  # CPU autocast has bf16
        args.dtypes = ["fp32", "bf16"] if bf16 else ["fp32"]
    elif "bf16" in args.dtypes and cuda and not torch.cuda.is_bf16_supported():
        parser.error("this GPU does not support bf16: pass --dtypes fp32")
    cpu = f"CPU, {torch.get_num_threads()} thread(s)"
    name = torch.cuda.get_device_name(device) if cuda else cpu
    print(f"device: {name}; widths / {args.width_divisor}; repeats {args.repeats} after "
          f"{args.warmup} warm-up; CFG {args.cfg_scale}; torch {torch.__version__}")  # fmt: skip
    print(PAPER)
    for pair in args.pairs:
        for batch in args.batches:
            for dtype in args.dtypes:
                report(bench(pair, batch, dtype, args, device), args.e2e_steps)


if __name__ == "__main__":
    main()
