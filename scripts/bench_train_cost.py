"""Cost of one discriminator training step vs one fine-tuning step of the two bases (paper A.9,
Table 11: D training is 1.46x-2.11x faster; this project's target is >= 2.5x).

    python scripts/bench_train_cost.py --device cuda --dtype bf16             # full size, batch 8
    python scripts/bench_train_cost.py --tiny --threads 1                     # CPU: widths / 8

All steps see the same batch of B real pairs (latents + text embeddings), in one run:

- D step (what ``mmdisco.training`` runs): the bases' noise predictions on the real batch (no
  gradient), D on real (forward + input gradient with create_graph) and fake pairs, the
  double backward of L_D + L_DSM, Adam. It is the real ``JointLoss`` call on the bases below.
- D step, precomputed targets (``train.dsm_draws=K``): the same without the bases' forward:
  the real pairs' (t, prompt kept) and eps come from a stored draw, their noise is regenerated
  from its seed (``mmdisco.pairs.dsm.draw_noise``), the fake pairs are drawn as before.
- fine-tuning step: for each base, forward + backward of its UNet with its own denoising loss
  ||eps_theta(x_t, t, c) - eps||^2 and an AdamW step.

Bases and D: ``bench_models.py`` (random-init, the real architectures; ``--width-divisor k``
divides every channel width to fit a CPU, the depth and input shapes stay).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from dataclasses import replace

import torch
from bench_models import (  # same folder: the shared base / D builders and the timer
    SHAPES,
    build_bases,
    build_discriminator,
    make_batch,
    num_params,
    timed,
)

from mmdisco.loss import JointLoss, apply_keep
from mmdisco.pairs.dsm import NOISE_SEED_MAX, draw_noise

PAPER_RATIO = {"audioldm_animatediff": "1.46x-2.11x (paper, all pairs)", "auffusion_vc2": ""}


def d_step(bases, disc, opt, loss_fn, real, fake, conds, precision) -> Callable[[], None]:
    def step():
        with precision():
            terms = loss_fn(disc, bases, real, fake, conds, conds)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()

    return step


def d_step_stored(bases, disc, opt, loss_fn, real, fake, conds, precision) -> Callable[[], None]:
    """The D step with a precomputed L_DSM target: one stored draw per real pair (its eps
    computed here once), the noise regenerated from its seed every step, no base forward."""
    dev = real["audio"].device
    shapes = [{m: tuple(x[m].shape) for m in ("audio", "video")} for x in (real, fake)]
    g = torch.Generator().manual_seed(1)
    stored = loss_fn.draw(1000, *shapes, conditional=True, generator=g)
    seeds = torch.randint(0, NOISE_SEED_MAX, (real["audio"].shape[0],), generator=g).tolist()

    def noise():  # what RealWithTargets does per pair, on the CPU
        per_pair = [draw_noise(s, {m: v[1:] for m, v in shapes[0].items()}) for s in seeds]
        return {m: torch.stack([n[m] for n in per_pair]).to(dev) for m in ("audio", "video")}

    t, keep = stored.t_real.to(dev), stored.keep_real.to(dev)
    with precision():
        xt = loss_fn.noised(bases, real, t, noise())
        eps = loss_fn.base_noise(bases, xt, t, apply_keep(conds, keep))

    def step():
        draws = loss_fn.draw(1000, *shapes, conditional=True)
        draws = replace(draws, t_real=t, noise_real=noise(), keep_real=keep)
        with precision():
            terms = loss_fn(disc, bases, real, fake, conds, conds, draws=draws, base_eps=eps)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()

    return step


def finetune_step(bases, opts, real, conds, precision) -> Callable[[], None]:
    def step():
        for m, opt in zip(("audio", "video"), opts):
            base = getattr(bases, m)
            x0 = real[m]
            noise = torch.randn_like(x0)
            t = torch.randint(0, 1000, (x0.shape[0],), device=x0.device)
            xt = base.schedule.add_noise(x0, noise, t)
            with precision():
                out = base(xt, t, conds[m].cond)
            loss = (out.float() - noise).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return step


def base_forward(bases, real, conds, precision) -> Callable[[], None]:
    """The bases' share of the D step: their no-grad forward on the real batch."""
    t = torch.randint(0, 1000, (real["audio"].shape[0],), device=real["audio"].device)

    def step():
        with precision():
            bases.predict_noise(real, t, conds)

    return step


def bench_pair(pair: str, args, device) -> None:
    torch.manual_seed(0)
    k = args.width_divisor
    bases = build_bases(pair, k).to(device)
    disc = build_discriminator(pair, k).to(device).train()
    real, fake, conds = make_batch(pair, args.batch, device)
    bf16 = args.dtype == "bf16"

    def precision():
        return torch.autocast(device.type, torch.bfloat16) if bf16 else contextlib.nullcontext()

    loss_fn = JointLoss(cond_dropout=0.1, residual_fp32=not args.residual_autocast)
    d_opt = torch.optim.Adam(disc.parameters(), lr=1e-4)
    bases.eval().requires_grad_(False)
    parts = {"base forward (no grad)": base_forward(bases, real, conds, precision)}
    d_fn = d_step(bases, disc, d_opt, loss_fn, real, fake, conds, precision)
    times = {name: timed(fn, device, args.repeats, args.warmup) for name, fn in parts.items()}
    times["D step"] = timed(d_fn, device, args.repeats, args.warmup)
    stored_fn = d_step_stored(bases, disc, d_opt, loss_fn, real, fake, conds, precision)
    times["D step, stored targets"] = timed(stored_fn, device, args.repeats, args.warmup)
    del d_opt
    bases.train().requires_grad_(True)
    ft_opts = [
        torch.optim.AdamW(getattr(bases, m).parameters(), lr=1e-5) for m in ("audio", "video")
    ]
    ft_fn = finetune_step(bases, ft_opts, real, conds, precision)
    times["fine-tune step"] = timed(ft_fn, device, args.repeats, args.warmup)

    ratio = times["fine-tune step"] / times["D step"]
    bound = times["fine-tune step"] / times["base forward (no grad)"]
    d_only = times["D step"] - times["base forward (no grad)"]
    print(f"\n{pair}: audio base {num_params(bases.audio):.0f}M, video base "
          f"{num_params(bases.video):.0f}M, D {num_params(disc):.1f}M parameters")  # fmt: skip
    for name, s in times.items():
        print(f"  {name:28} {s:9.3f} s")
    print(f"  {'  of which D (fwd + 2x bwd + Adam)':28} {d_only:9.3f} s")
    print(
        f"  fine-tune / D step = {ratio:.2f}x   (target >= 2.5x; {PAPER_RATIO[pair] or 'paper: -'})"
    )
    stored = times["fine-tune step"] / times["D step, stored targets"]
    print(f"  fine-tune / D step with precomputed L_DSM targets (train.dsm_draws) = {stored:.2f}x")
    print(f"  bound: fine-tune / base forward = {bound:.2f}x (a D step costing nothing beyond "
          f"the bases' forward)")  # fmt: skip
    print(f"  D's own share of the D step: {d_only / times['D step']:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 CUDA (paper), 1 CPU")
    parser.add_argument("--repeats", type=int, default=None, help="default: 10 CUDA, 2 CPU")
    parser.add_argument("--warmup", type=int, default=None, help="default: 3 CUDA, 1 CPU")
    parser.add_argument("--width-divisor", type=int, default=1, choices=[1, 2, 4, 8],
                        help="divide every channel width (--tiny: 8)")  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help="CPU preset: --width-divisor 8")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--residual-autocast", action="store_true",
                        help="D's input gradient under autocast too (default: fp32)")  # fmt: skip
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.tiny:
        args.width_divisor = 8
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch = args.batch or (8 if cuda else 1)
    args.repeats = args.repeats or (10 if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    name = (
        torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} thread(s)"
    )
    print(
        f"device: {name}; {args.dtype}; batch {args.batch}; widths / {args.width_divisor}; "
        f"repeats {args.repeats} after {args.warmup} warm-up; torch {torch.__version__}"
    )
    for pair in args.pairs:
        bench_pair(pair, args, device)


if __name__ == "__main__":
    main()
