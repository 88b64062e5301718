"""Discriminator training (paper Algorithm 1) on one or many processes, with Accelerate.

    train(cfg)   # cfg: the resolved Hydra config of scripts/train.py

Stages: base models (frozen) -> real pairs -> fake pairs (sampled once, cached) -> [with
``train.dsm_draws=K``: the bases' L_DSM targets for K draws per real pair, computed once,
``mmdisco.pairs.dsm``] -> D training with :class:`~mmdisco.loss.JointLoss` ->
``discriminator.safetensors``. Re-running with the same
``run_dir`` resumes from its last checkpoint, bit-identically to an uninterrupted run.

Randomness and processes. ``train.batch_size`` is the GLOBAL batch (as many real pairs as fake
pairs). Everything random about step s -- the dataset indices of its real and fake pairs, their
steps t, noises and prompt-dropout masks -- is drawn for the whole global batch from generators
seeded by (seed, stream, s) alone; process r of W keeps slice [r B/W, (r+1) B/W). Each process
takes the mean loss over its slice and DDP averages the gradients, which is the mean over the
global batch because the slices have equal sizes. So W processes train the same D as one (up
to the order of float sums in the gradient all-reduce), and a resumed run needs no generator
state to continue the same sequence of batches.

Mixed precision (``train.mixed_precision``: no | bf16 | fp16). The loss runs inside
``accelerator.autocast()``: the base models' noise predictions and D's forward on fake pairs run
in bf16 / fp16. With ``loss.residual_fp32`` (the default) D's forward on real pairs and the
input gradient r_m = -sigma d logit / d m_t run in float32 with autocast off, and L_D / L_DSM are
reduced in float32. Weights, gradients, Adam state and EMA are float32 throughout; fp16 uses
Accelerate's loss scaler (its state is checkpointed).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mmdisco.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from mmdisco.config import check_no_moved_keys, check_train_config
from mmdisco.faults import NonFiniteGuard
from mmdisco.io import save_module, save_tensors
from mmdisco.logs import Logs, Meter
from mmdisco.loss import Draws
from mmdisco.pairs import batch_conditions, collate_pairs
from mmdisco.pairs.dsm import check_dsm_draws
from mmdisco.pairs.prepare import fake_pairs, real_pairs, real_pairs_with_targets
from mmdisco.runlock import RunLock
from mmdisco.runs import CONFIG_FILE, WEIGHTS_FILE, setup_torch
from mmdisco.seeds import (
    CALIBRATION_STREAM,
    FAKE_STREAM,
    LOSS_STREAM,
    REAL_STREAM,
    StepIndices,
    StepIndicesWithDraws,
    step_generator,
)

RAW_WEIGHTS_FILE = "discriminator_raw.safetensors"  # the non-EMA weights, when EMA is on
CHECKPOINT_DIR = "checkpoint"


# -- exponential moving average of D's weights ---------------------------------------------------
class EMA:
    """Float32 shadow of a module's state dict: w_ema <- decay w_ema + (1 - decay) w."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for k, v in module.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v.float(), 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)


# -- configuration and data --------------------------------------------------------------------
def holdout_count(num_real: int, holdout: float) -> int:
    """Real pairs kept out of D training (the last ones of the store) to calibrate the joint
    scales: ``holdout`` is a fraction of the real pairs, at least 1 pair when > 0."""
    if not 0 <= holdout < 1:
        raise ValueError(f"calibration.holdout must be in [0, 1), got {holdout}")
    return 0 if holdout == 0 else min(num_real - 1, max(1, round(holdout * num_real)))


def pair_loader(
    dataset, tc, seed, stream, start, rank, world, pin, num_items=None, draws=None
) -> DataLoader:
    """Batches of ``dataset`` items [0, num_items) (default: all) for steps [start, steps);
    items ``(index, draw)`` with ``draws`` = K precomputed L_DSM draws per pair."""
    num = len(dataset) if num_items is None else num_items
    if draws is None:
        sampler = StepIndices(num, tc.batch_size, seed, stream, start, tc.steps, rank, world)
    else:
        sampler = StepIndicesWithDraws(
            num, tc.batch_size, seed, stream, start, tc.steps, draws, rank, world
        )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_pairs,
        num_workers=int(tc.num_workers),
        pin_memory=pin,
    )


def batch_to(batch: dict, device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()
    }


def conditions(bases, batch: dict):
    """Per-modality conditions of a batch: None for bare {audio, video} pairs; otherwise built
    from the stored embeddings it carries by ``mmdisco.pairs.batch_conditions``."""
    if not any(k.endswith(("_cond", "_pooled")) for k in batch):
        return None  # bare pairs, or captions of unconditional bases
    conds = batch_conditions(bases, batch)
    return conds if any(c is not None for c in conds.values()) else None


def global_shapes(batch: dict, batch_size: int, names) -> dict[str, tuple[int, ...]]:
    return {m: (batch_size, *batch[m].shape[1:]) for m in names}


# -- the loop ------------------------------------------------------------------------------------
def train(cfg: DictConfig) -> Path:
    """Train (or resume) the discriminator of ``cfg.run_dir``; returns the weights' path."""
    tc = cfg.train
    accelerator, run_dir, lock = start_run(cfg)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    main = accelerator.is_main_process
    loss_fn = instantiate(cfg.loss)
    dsm_draws = check_dsm_draws(tc.get("dsm_draws"), loss_fn)  # before any stage runs

    # 1. base models (frozen; the main process trains / downloads them first),
    # 2. real pairs, 3. fake pairs from the bare bases (the pair store)
    with accelerator.main_process_first():
        bases = instantiate(cfg.base).to(device).eval().requires_grad_(False)
    data = instantiate(cfg.data)
    progress = bool(cfg.progress) and main
    real = real_pairs(data, bases, cfg, accelerator, progress)
    fake = fake_pairs(data, bases, cfg, accelerator, device, progress)
    real_train = real  # with train.dsm_draws: 3b. the bases' L_DSM targets, computed once
    if dsm_draws is not None:
        real_train = real_pairs_with_targets(
            real, bases, loss_fn, dsm_draws, cfg, accelerator, device, progress
        )

    # 4. the discriminator, its optimizer, EMA and loss, resumed from the last checkpoint
    disc, opt, ema, start = discriminator_state(cfg, accelerator, run_dir / CHECKPOINT_DIR)
    no_scaler = accelerator.scaler is None
    guard = NonFiniteGuard(tc.nonfinite, accelerator, run_dir / CHECKPOINT_DIR, no_scaler)
    num_heldout = holdout_count(len(real), float((cfg.get("calibration") or {}).get("holdout", 0)))
    if dsm_draws is not None and main:
        print(draw_reuse_note(tc.steps, tc.batch_size, len(real) - num_heldout, dsm_draws))
    loaders = [
        pair_loader(ds, tc, cfg.seed, stream, start, rank, world, device.type == "cuda", n, k)
        for ds, stream, n, k in (
            (real_train, REAL_STREAM, len(real) - num_heldout, dsm_draws),
            (fake, FAKE_STREAM, len(fake), None),
        )
    ]
    num_t = bases.schedules[bases.names[0]].num_train_timesteps
    meter = Meter(num_t, int(tc.t_buckets), device)
    logs = Logs(run_dir, start, bool(tc.tensorboard)) if main else None
    bar = tqdm(
        total=tc.steps, initial=start, disable=not (cfg.progress and main), desc="D training"
    )
    tick, tick_step = time.perf_counter(), start
    for step, (real_b, fake_b) in enumerate(zip(*loaders), start=start):
        lr = learning_rate(tc, step)  # a function of the step alone: a resume continues it
        for group in opt.param_groups:
            group["lr"] = lr
        terms, grad_norm, skipped = train_step(
            cfg, accelerator, bases, disc, opt, loss_fn, step, real_b, fake_b, guard
        )
        if ema is not None and not skipped:
            ema.update(accelerator.unwrap_model(disc))
        if not skipped:
            meter.add(terms, torch.as_tensor(grad_norm, device=device))
        bar.update(1)

        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:
            row = meter.result(accelerator)
            elapsed = time.perf_counter() - tick
            row["lr"] = opt.param_groups[0]["lr"]
            row["pairs_per_s"] = 2 * tc.batch_size * (done - tick_step) / elapsed
            tick, tick_step = time.perf_counter(), done
            guard.log_into(row)
            if main:
                logs.write(done, row)
                bar.set_postfix({k: f"{row[k]:.3f}" for k in progress_terms(loss_fn) if k in row})
        if done % tc.ckpt_every == 0:
            checkpoint(cfg, accelerator, run_dir / CHECKPOINT_DIR, done, disc, opt, ema)
    bar.close()
    weights = finish(accelerator, disc, ema, run_dir, logs)
    if main and num_heldout:  # 5. joint scales from the held-out real pairs (joint_scales=auto)
        calibrate_run(cfg, bases, real, num_heldout, weights, device)
    if lock is not None:
        lock.release()
    return weights


def calibrate_run(cfg, bases, real, num_heldout: int, weights: Path, device) -> dict:
    """Joint scales that minimise L_DSM on the held-out real pairs (``mmdisco.calibration``),
    written to ``run_dir/joint_scales.json`` for ``guidance.joint_scales=auto``; returns them."""
    from mmdisco.calibration import (
        SCALES_FILE,
        dsm_optimal_scales,
        residual_statistics,
        save_joint_scales,
    )
    from mmdisco.io import load_module

    cal = cfg.calibration
    n = min(num_heldout, int(cal.max_pairs))
    first = len(real) - num_heldout
    batch = batch_to(collate_pairs([real[i] for i in range(first, first + n)]), device)
    disc = load_module(weights, instantiate(cfg.discriminator)).to(device).eval()
    disc.requires_grad_(False)
    gen = step_generator(cfg.seed, CALIBRATION_STREAM, 0)
    stats = residual_statistics(
        disc,
        bases,
        {m: batch[m] for m in bases.names},
        int(cal.buckets),
        int(cal.draws),
        int(cal.batch_size),
        gen,
        conditions(bases, batch),
    )
    scales = dsm_optimal_scales(stats, per_bucket=bool(cal.per_bucket))
    extra = {"heldout_pairs": n, "draws": int(cal.draws), "criterion": "dsm"}
    how = f"L_DSM-optimal on {n} held-out real pairs"
    if cal.get("criterion", "dsm") == "alignment":
        extra.update(dsm_scales=scales, criterion="alignment", scorer=str(cal.scorer))
        scale, extra["grid_scores"] = alignment_search(cfg, bases, real, first, n, disc, device)
        scales = dict.fromkeys(bases.names, scale)
        how = f"best {cal.scorer} alignment over calibration.grid, held-out prompts"
        how += ", then per bucket of t" if cal.per_bucket else ""
    save_joint_scales(Path(cfg.run_dir) / SCALES_FILE, scales, stats, extra)
    print(f"joint scales ({how}): {scales}")
    return scales


def alignment_search(cfg, bases, real, first: int, n: int, disc, device):
    """``calibration.criterion=alignment``: the scale of ``calibration.grid`` whose guided
    samples agree best by ``calibration.scorer`` (``mmdisco.scale_search``); with
    ``calibration.per_bucket`` then refined per bucket of t (a list)."""
    from mmdisco.scale_search import search_joint_scale

    cal = cfg.calibration
    num = int(cal.pairs)
    prompts = None
    if bases.text_conditional:  # the held-out pairs' captions, cycled
        captions = [real.captions[first + i] for i in range(n)]
        prompts = [captions[i % len(captions)] for i in range(num)]
    seed = int(np.random.SeedSequence([int(cfg.seed), CALIBRATION_STREAM, 1]).generate_state(1)[0])
    print(f"choosing the joint scale: {num} guided pairs per scale of {list(cal.grid)}"
          + (f", then per bucket of t ({int(cal.buckets)})" if cal.per_bucket else ""))  # fmt: skip
    return search_joint_scale(
        bases,
        disc,
        cfg.sampler,
        list(cal.grid),
        num,
        seed,
        str(cal.scorer),
        device,
        prompts,
        bool(cfg.guidance.discriminator_cfg),
        int(cal.batch_size),
        progress=bool(cfg.progress),
        buckets=int(cal.buckets) if cal.per_bucket else None,
    )


def start_run(cfg: DictConfig) -> tuple[Accelerator, Path, RunLock | None]:
    """Check the config (once), set up torch and the processes, take the run directory's lock
    (main process: one writer per run dir), save the resolved config."""
    check_no_moved_keys(cfg)
    setup_torch(cfg.device, cfg.threads)
    cpu = cfg.device == "cpu"
    check_train_config(cfg.train, PartialState(cpu=cpu).num_processes)
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=cpu)
    run_dir = Path(cfg.run_dir)
    lock = None
    if accelerator.is_main_process:
        lock = RunLock(run_dir).acquire()
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / CONFIG_FILE, resolve=True)
    return accelerator, run_dir, lock


def learning_rate(tc, step: int) -> float:
    """``train.lr`` at ``step`` (0-based): constant, or with ``train.lr_decay=cosine`` decayed as
    lr (1 + cos(pi step / steps)) / 2 towards 0 at the last step (checked by
    ``check_train_config``). A constant step size leaves the final weights a noisy iterate, and
    guidance at a joint scale s multiplies any error of D's logit by s (README, "Guidance that
    aligns")."""
    if tc.get("lr_decay") is None:
        return float(tc.lr)
    return float(tc.lr) * 0.5 * (1.0 + math.cos(math.pi * step / int(tc.steps)))


def progress_terms(loss_fn) -> tuple[str, ...]:
    """The logged terms the progress bar shows: those in the loss being minimised."""
    terms = ("l_d", "acc_real") if loss_fn.bce else ()  # acc_real: the logit's sign, L_D's
    terms += ("l_dsm",) if loss_fn.lambda_dsm > 0 else ()
    c = loss_fn.contrastive
    terms += ("l_nce", "acc_nce") if c["weight"] > 0 else ()
    return terms + (("l_pbce",) if c["pair_bce"] > 0 else ())


def discriminator_state(cfg: DictConfig, accelerator: Accelerator, ckpt: Path):
    """(D, optimizer, EMA or None, first step), restored from ``ckpt`` when it exists. D is
    seeded here: its init must not depend on whether the stages before ran or were cached."""
    tc, device = cfg.train, accelerator.device
    torch.manual_seed(cfg.seed)
    disc = instantiate(cfg.discriminator).to(device).train()
    opt = torch.optim.Adam(disc.parameters(), lr=tc.lr)
    ema = EMA(disc, tc.ema_decay) if tc.ema_decay is not None else None
    start, extra = 0, {}
    if checkpoint_exists(ckpt):
        shadow = ema.shadow if ema else None
        start, extra = load_checkpoint(ckpt, disc, opt, shadow, accelerator.process_index)
    disc, opt = accelerator.prepare(disc, opt)
    accelerator.unwrap_model(disc, keep_fp32_wrapper=False)  # autocast only where the loss says
    if accelerator.scaler is not None and "scaler" in extra:
        accelerator.scaler.load_state_dict(extra["scaler"])
    return disc, opt, ema, start


def train_step(cfg, accelerator, bases, disc, opt, loss_fn, step, real_b, fake_b, guard):
    """One optimizer step on this process's slice of the global batch; (terms, grad norm,
    skipped): a non-finite loss or gradient stops here or skips the update (``guard``)."""
    tc, device = cfg.train, accelerator.device
    local = tc.batch_size // accelerator.num_processes
    first = accelerator.process_index * local
    real_b, fake_b = batch_to(real_b, device), batch_to(fake_b, device)
    real_c, fake_c = conditions(bases, real_b), conditions(bases, fake_b)
    draws = loss_fn.draw(
        bases.schedules[bases.names[0]].num_train_timesteps,
        global_shapes(real_b, tc.batch_size, bases.names),
        global_shapes(fake_b, tc.batch_size, bases.names),
        conditional=real_c is not None,
        generator=step_generator(cfg.seed, LOSS_STREAM, step, device),
    ).slice(first, first + local)
    draws, base_eps = stored_real_draws(draws, real_b, real_c is not None)
    with accelerator.autocast():
        terms = loss_fn(disc, bases, real_b, fake_b, real_c, fake_c, draws=draws, base_eps=base_eps)
    opt.zero_grad(set_to_none=True)
    accelerator.backward(terms["loss"])
    grad_norm = accelerator.clip_grad_norm_(disc.parameters(), tc.grad_clip or math.inf)
    skipped = guard.skip(step, terms, grad_norm)  # NaN / Inf: stop here, or skip the update
    if skipped:
        opt.zero_grad(set_to_none=True)  # Adam leaves parameters without a gradient alone
    opt.step()
    return terms, grad_norm, skipped


MAX_DRAW_REUSE = 8  # measured: quality held at 3.6 uses per stored draw, collapsed at 1400


def draw_reuse_note(steps: int, batch_size: int, num_pairs: int, draws: int) -> str:
    """How often D training uses each precomputed L_DSM draw on average, and a warning (with
    the K that fixes it) when that exceeds ``MAX_DRAW_REUSE``: D then fits L_DSM to a few fixed
    noises per pair (the toy's residual grew 4x and guidance collapsed at K = 8, 1400 uses)."""
    reuse = steps * batch_size / (num_pairs * draws)
    note = f"train.dsm_draws={draws}: each stored draw is used {reuse:.1f} times on average"
    if reuse <= MAX_DRAW_REUSE:
        return note
    k = math.ceil(steps * batch_size / (num_pairs * MAX_DRAW_REUSE))
    return (
        f"WARNING: {note} (train.steps x train.batch_size / (real pairs x K)); above "
        f"{MAX_DRAW_REUSE} D overfits L_DSM to the stored noises: use train.dsm_draws >= {k}"
    )


def stored_real_draws(draws: Draws, real_b: dict, conditional: bool):
    """(draws, base eps): with precomputed L_DSM targets in the real batch (``train.dsm_draws``)
    the real pairs' t, noise and prompt-keep mask are the stored draw's and the bases' eps comes
    with them; the fake pairs' draws stay the step's. Unchanged (draws, None) without."""
    if "dsm_t" not in real_b:
        return draws, None
    keep = real_b.get("dsm_keep") if conditional else None
    noise = {m: real_b[f"dsm_noise_{m}"] for m in draws.noise_real}
    new = replace(draws, t_real=real_b["dsm_t"], noise_real=noise, keep_real=keep)
    return new, {m: real_b[f"dsm_eps_{m}"] for m in draws.noise_real}


def checkpoint(cfg, accelerator: Accelerator, ckpt: Path, done: int, disc, opt, ema) -> None:
    """Everything a resumed run needs, written atomically (see ``mmdisco.checkpoint``)."""
    scaler = accelerator.scaler
    save_checkpoint(
        ckpt,
        done,
        accelerator.unwrap_model(disc),
        opt,
        OmegaConf.to_container(cfg, resolve=True),
        ema=ema.shadow if ema else None,
        extra={"scaler": scaler.state_dict()} if scaler else None,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        barrier=accelerator.wait_for_everyone,
    )


def finish(accelerator: Accelerator, disc, ema: EMA | None, run_dir: Path, logs) -> Path:
    """Write the weights sampling loads (the EMA when on, the raw weights beside it) and plots."""
    from mmdisco.plots import accuracy_by_t, training_curves

    accelerator.wait_for_everyone()
    weights = run_dir / WEIGHTS_FILE
    if accelerator.is_main_process:
        raw = accelerator.unwrap_model(disc)
        if ema is not None:
            save_tensors(weights, ema.shadow)
            save_module(run_dir / RAW_WEIGHTS_FILE, raw)
        else:
            save_module(weights, raw)
        logs.close()
        if logs.csv_path.exists():
            training_curves(logs.csv_path, run_dir / "train_curves.png")
            accuracy_by_t(logs.csv_path, run_dir / "accuracy_by_t.png")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return weights
