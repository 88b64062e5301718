"""Discriminator training (paper Algorithm 1) on one or many processes, with Accelerate.

    train(cfg)   # cfg: the resolved Hydra config of scripts/train.py

Stages: base models (frozen) -> real pairs -> fake pairs (sampled once, cached) -> D training with
:class:`~mmdisco.loss.JointLoss` -> ``discriminator.safetensors``. Re-running with the same
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

import csv
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from mmdisco.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from mmdisco.data.latents import TensorPairs, collate_pairs
from mmdisco.faults import NonFiniteGuard, discard_if_damaged
from mmdisco.guidance import MODALITIES
from mmdisco.io import load_tensors, save_module, save_tensors
from mmdisco.runlock import RunLock
from mmdisco.runs import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    fake_pairs,
    fake_sampler_kwargs,
    setup_torch,
)

RAW_WEIGHTS_FILE = "discriminator_raw.safetensors"  # the non-EMA weights, when EMA is on
MIXED_PRECISION = ("no", "bf16", "fp16")
# generator streams of one step (see step_generator)
REAL_STREAM, FAKE_STREAM, LOSS_STREAM = 0, 1, 2


# -- randomness ---------------------------------------------------------------------------------
def step_seed(seed: int, stream: int, step: int) -> int:
    """A 64-bit seed that names (run seed, stream, step): independent streams, no shared state."""
    words = np.random.SeedSequence([seed, stream, step]).generate_state(2, np.uint32)
    return (int(words[0]) << 32 | int(words[1])) & 0x7FFF_FFFF_FFFF_FFFF


def step_generator(seed: int, stream: int, step: int, device="cpu") -> torch.Generator:
    return torch.Generator(device).manual_seed(step_seed(seed, stream, step))


class StepIndices(Sampler):
    """Batch sampler: for every step in [start, steps) the global batch of ``batch_size``
    indices (uniform, with replacement, drawn from ``step_generator(seed, stream, step)``) and
    this process's slice of it."""

    def __init__(self, num_items, batch_size, seed, stream, start, steps, rank=0, world_size=1):
        self.num_items, self.batch_size = num_items, batch_size
        self.seed, self.stream, self.start, self.steps = seed, stream, start, steps
        self.local = batch_size // world_size
        self.offset = rank * self.local

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            g = step_generator(self.seed, self.stream, step)
            idx = torch.randint(0, self.num_items, (self.batch_size,), generator=g)
            yield idx[self.offset : self.offset + self.local].tolist()


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


# -- logging -------------------------------------------------------------------------------------
class Meter:
    """Sums of the logged quantities over a log interval on this process (device tensors, no
    host sync per step); :meth:`result` all-reduces them and returns one row."""

    def __init__(self, num_t: int, buckets: int, device):
        self.num_t, self.buckets, self.device = num_t, buckets, device
        self.bounds = [
            (k * num_t // buckets, (k + 1) * num_t // buckets - 1) for k in range(buckets)
        ]
        self.reset()

    def reset(self) -> None:
        z = lambda n=1: torch.zeros(n, dtype=torch.float64, device=self.device)  # noqa: E731
        self.sums = {
            "steps": z(), "loss": z(), "l_d": z(), "l_dsm": z(),
            "real_ok": z(self.buckets), "real_n": z(self.buckets),
            "fake_ok": z(self.buckets), "fake_n": z(self.buckets),
            "res_pairs": z(), "grad_norm": z(),
            **{f"{k}_{m}": z() for k in ("res_norm", "eps_norm") for m in MODALITIES},
        }  # fmt: skip

    def _by_bucket(self, name: str, t: Tensor, ok: Tensor) -> None:
        b = (t.long() * self.buckets // self.num_t).clamp(0, self.buckets - 1)
        self.sums[f"{name}_ok"] += torch.bincount(b, ok.double(), self.buckets)
        self.sums[f"{name}_n"] += torch.bincount(b, minlength=self.buckets).double()

    @torch.no_grad()
    def add(self, terms: dict[str, Tensor], grad_norm: Tensor) -> None:
        s = self.sums
        s["steps"] += 1
        for k in ("loss", "l_d", "l_dsm"):
            s[k] += terms[k].detach().double()
        s["grad_norm"] += grad_norm.detach().double()
        self._by_bucket("real", terms["t_real"], terms["logit_real"] > 0)
        self._by_bucket("fake", terms["t_fake"], terms["logit_fake"] < 0)
        if "res_norm_audio" in terms:
            s["res_pairs"] += terms["res_norm_audio"].numel()
            for m in MODALITIES:
                s[f"res_norm_{m}"] += terms[f"res_norm_{m}"].double().sum()
                s[f"eps_norm_{m}"] += terms[f"eps_norm_{m}"].double().sum()

    def result(self, accelerator: Accelerator) -> dict[str, float]:
        names = list(self.sums)
        flat = torch.cat([self.sums[k] for k in names])
        flat = accelerator.reduce(flat, reduction="sum").cpu()
        sizes = [self.sums[k].numel() for k in names]
        s = dict(zip(names, torch.split(flat, sizes)))
        per_step = s["steps"].item() or math.nan  # steps x processes (none: all skipped)
        row = {k: s[k].item() / per_step for k in ("loss", "l_d", "l_dsm")}
        for name in ("real", "fake"):
            row[f"acc_{name}"] = s[f"{name}_ok"].sum().item() / max(s[f"{name}_n"].sum().item(), 1)
        for name in ("real", "fake"):
            for (lo, hi), ok, n in zip(self.bounds, s[f"{name}_ok"], s[f"{name}_n"]):
                row[f"acc_{name}_t{lo}-{hi}"] = ok.item() / n.item() if n > 0 else math.nan
        pairs = s["res_pairs"].item()
        for m in MODALITIES:
            r, e = s[f"res_norm_{m}"].item(), s[f"eps_norm_{m}"].item()
            row[f"res_norm_{m}"] = r / pairs if pairs else math.nan
            row[f"eps_norm_{m}"] = e / pairs if pairs else math.nan
            row[f"res_ratio_{m}"] = r / e if pairs and e > 0 else math.nan
        row["grad_norm"] = s["grad_norm"].item() / per_step
        self.reset()
        return row


class Logs:
    """``train_log.csv`` and TensorBoard events in the run directory (main process only).

    On resume from step s, CSV rows after s (written after the last checkpoint) are dropped and
    TensorBoard purges its events after s, so both read like one uninterrupted run.
    """

    def __init__(self, run_dir: Path, start: int, tensorboard: bool):
        self.csv_path = run_dir / "train_log.csv"
        _truncate_csv(self.csv_path, start)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(run_dir / "tensorboard", purge_step=start or None)

    def write(self, step: int, row: dict[str, float]) -> None:
        row = {"step": step, **row}
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.writer is not None:
            for k, v in row.items():
                if k != "step" and not math.isnan(v):
                    self.writer.add_scalar(_tb_tag(k), v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _tb_tag(key: str) -> str:
    if key.startswith(("acc_real_t", "acc_fake_t")):
        return f"acc_by_t/{key[4:]}"
    if key.startswith(("res_", "eps_")):
        return f"residual/{key}"
    if key.startswith(("loss", "l_d", "acc_")):
        return f"loss/{key}"
    return f"train/{key}"


def _truncate_csv(path: Path, step: int) -> None:
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if int(r["step"]) <= step]
    if len(keep) == len(rows):
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)


# -- configuration and data --------------------------------------------------------------------
def check_train_config(tc, world_size: int = 1) -> None:
    """One clear error per bad ``train.*`` value."""
    if tc.mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"train.mixed_precision must be one of {MIXED_PRECISION}, got {tc.mixed_precision!r}"
        )
    if tc.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("train.mixed_precision=fp16 needs a CUDA device; use bf16 (or no) on CPU")
    for key in ("steps", "batch_size", "log_every", "ckpt_every", "t_buckets"):
        if int(tc[key]) < 1:
            raise ValueError(f"train.{key} must be >= 1, got {tc[key]}")
    if tc.batch_size % world_size:
        raise ValueError(
            f"train.batch_size={tc.batch_size} (the global batch) is not divisible by the "
            f"{world_size} processes: use a multiple of {world_size}"
        )
    if tc.ema_decay is not None and not 0 <= tc.ema_decay < 1:
        raise ValueError(f"train.ema_decay must be in [0, 1) or null (off), got {tc.ema_decay}")
    if tc.grad_clip is not None and not tc.grad_clip > 0:
        raise ValueError(f"train.grad_clip must be > 0 or null (off), got {tc.grad_clip}")
    if int(tc.num_workers) < 0:
        raise ValueError(f"train.num_workers must be >= 0, got {tc.num_workers}")


def uses_latent_cache(data) -> bool:
    """Data sets of media clips (PairedVideoFolder, SyntheticPairs) go through the sharded latent
    caches of ``mmdisco.data.cache`` / ``mmdisco.fakes``; pair sets that live in memory (the
    toy) give their pairs with ``real_pairs`` and their fakes are sampled into the run dir."""
    return hasattr(data, "cache_key") and hasattr(data, "for_bases")


def _base_key(cfg: DictConfig) -> dict:
    """The base config that names a cache (without keys that do not change the models)."""
    base = OmegaConf.to_container(cfg.base, resolve=True)
    return {k: v for k, v in base.items() if k != "progress"}


def real_dataset(data, bases, cfg: DictConfig, accelerator: Accelerator) -> Dataset:
    """The real pairs as a Dataset, identical on every process: the sharded latent cache
    (every rank encodes its shards) or ``real_pairs(bases)`` computed once by the main process
    and saved to ``run_dir/real_pairs.safetensors``."""
    progress = bool(cfg.progress) and accelerator.is_main_process
    if uses_latent_cache(data):
        from mmdisco.data.cache import ShardedPairs, cache_real_latents

        path = cache_real_latents(
            data, bases, cfg.cache_dir, _base_key(cfg), accelerator=accelerator, progress=progress
        )
        return ShardedPairs(path)
    path = Path(cfg.run_dir) / "real_pairs.safetensors"
    with accelerator.main_process_first():
        discard_if_damaged(path)  # torn from outside: recomputed below
        if not path.exists() and accelerator.is_main_process:
            save_tensors(path, data.real_pairs(bases))
        return TensorPairs(load_tensors(path))


def fake_dataset(data, bases, cfg: DictConfig, accelerator: Accelerator) -> Dataset:
    """Pairs sampled independently from the bases, once: sharded over the ranks into
    ``<cache_dir>/fakes-<hash>`` (prompts drawn from the data's captions) for a cached data
    set, else by the main process into ``run_dir/fake_pairs.safetensors``."""
    progress = bool(cfg.progress) and accelerator.is_main_process
    seed = cfg.seed + 10_000
    if uses_latent_cache(data):
        from mmdisco.data.cache import ShardedPairs
        from mmdisco.fakes import presample_fakes

        path = presample_fakes(
            bases,
            data.captions,
            cfg.fake.num_pairs,
            cfg.cache_dir,
            seed=seed,
            sampler_kwargs=fake_sampler_kwargs(cfg.sampler),
            shard_size=cfg.fake.shard_size,
            batch_size=cfg.fake.batch_size,
            base_config=_base_key(cfg),
            accelerator=accelerator,
            device=accelerator.device,
            progress=progress,
        )
        return ShardedPairs(path)
    path = Path(cfg.run_dir) / "fake_pairs.safetensors"
    with accelerator.main_process_first():
        pairs = fake_pairs(bases, cfg.fake, cfg.sampler, path, seed, accelerator.device, progress)
    return TensorPairs(pairs)


def pair_loader(dataset, tc, seed, stream, start, rank, world, pin) -> DataLoader:
    sampler = StepIndices(len(dataset), tc.batch_size, seed, stream, start, tc.steps, rank, world)
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
    from the cached embeddings / captions it carries by ``mmdisco.data.cache.batch_conditions``."""
    if not any(k.endswith(("_cond", "_pooled")) for k in batch):
        return None  # bare pairs, or captions of unconditional bases
    from mmdisco.data.cache import batch_conditions

    conds = batch_conditions(bases, batch)
    return conds if any(c is not None for c in conds.values()) else None


def global_shapes(batch: dict, batch_size: int) -> dict[str, tuple[int, ...]]:
    return {m: (batch_size, *batch[m].shape[1:]) for m in MODALITIES}


# -- the loop ------------------------------------------------------------------------------------
def train(cfg: DictConfig) -> Path:
    """Train (or resume) the discriminator of ``cfg.run_dir``; returns the weights' path."""
    tc = cfg.train
    check_train_config(tc)
    setup_torch(cfg.device, cfg.threads)
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, cpu=cfg.device == "cpu")
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    check_train_config(tc, world)
    main = accelerator.is_main_process
    run_dir = Path(cfg.run_dir)
    lock = RunLock(run_dir).acquire() if main else None  # one writer per run dir
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / CONFIG_FILE, resolve=True)

    # 1. base models (frozen; the main process trains / downloads them first),
    # 2. real pairs, 3. fake pairs from the independent bases
    with accelerator.main_process_first():
        bases = instantiate(cfg.base).to(device).eval().requires_grad_(False)
    data = instantiate(cfg.data)
    real = real_dataset(data, bases, cfg, accelerator)
    fake = fake_dataset(data, bases, cfg, accelerator)

    # 4. the discriminator (seeded here: its init must not depend on whether the stages above
    # ran or were read from a cache), its EMA, optimizer and loss
    torch.manual_seed(cfg.seed)
    disc = instantiate(cfg.discriminator).to(device).train()
    opt = torch.optim.Adam(disc.parameters(), lr=tc.lr)
    ema = EMA(disc, tc.ema_decay) if tc.ema_decay is not None else None
    loss_fn = instantiate(cfg.loss)
    ckpt, start, extra = run_dir / "checkpoint", 0, {}
    if checkpoint_exists(ckpt):
        start, extra = load_checkpoint(ckpt, disc, opt, ema.shadow if ema else None, rank)
    disc, opt = accelerator.prepare(disc, opt)
    accelerator.unwrap_model(disc, keep_fp32_wrapper=False)  # autocast only where the loss says
    if accelerator.scaler is not None and "scaler" in extra:
        accelerator.scaler.load_state_dict(extra["scaler"])
    guard = NonFiniteGuard(tc.get("nonfinite", "stop"), accelerator, ckpt, not accelerator.scaler)

    pin = device.type == "cuda"
    loaders = [
        pair_loader(ds, tc, cfg.seed, stream, start, rank, world, pin)
        for ds, stream in ((real, REAL_STREAM), (fake, FAKE_STREAM))
    ]
    num_t = bases.schedules["audio"].num_train_timesteps
    local = tc.batch_size // world
    meter = Meter(num_t, int(tc.t_buckets), device)
    logs = Logs(run_dir, start, bool(tc.tensorboard)) if main else None
    bar = tqdm(
        total=tc.steps, initial=start, disable=not (cfg.progress and main), desc="D training"
    )
    tick, tick_step = time.perf_counter(), start
    for step, (real_b, fake_b) in enumerate(zip(*loaders), start=start):
        real_b, fake_b = batch_to(real_b, device), batch_to(fake_b, device)
        real_c, fake_c = conditions(bases, real_b), conditions(bases, fake_b)
        draws = loss_fn.draw(
            num_t,
            global_shapes(real_b, tc.batch_size),
            global_shapes(fake_b, tc.batch_size),
            conditional=real_c is not None,
            generator=step_generator(cfg.seed, LOSS_STREAM, step, device),
        ).slice(rank * local, (rank + 1) * local)
        with accelerator.autocast():
            terms = loss_fn(disc, bases, real_b, fake_b, real_c, fake_c, draws=draws)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(terms["loss"])
        grad_norm = accelerator.clip_grad_norm_(disc.parameters(), tc.grad_clip or math.inf)
        skip = guard.skip(step, terms, grad_norm)  # NaN / Inf: stop here, or skip the update
        if skip:
            opt.zero_grad(set_to_none=True)  # Adam leaves parameters without a gradient alone
        opt.step()
        if ema is not None and not skip:
            ema.update(accelerator.unwrap_model(disc))
        if not skip:
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
                bar.set_postfix({k: f"{row[k]:.3f}" for k in ("l_d", "l_dsm", "acc_real")})
        if done % tc.ckpt_every == 0:
            save_checkpoint(
                ckpt,
                done,
                accelerator.unwrap_model(disc),
                opt,
                OmegaConf.to_container(cfg, resolve=True),
                ema=ema.shadow if ema else None,
                extra={"scaler": accelerator.scaler.state_dict()} if accelerator.scaler else None,
                rank=rank,
                world_size=world,
                barrier=accelerator.wait_for_everyone,
            )
    bar.close()
    weights = finish(accelerator, disc, ema, run_dir, logs)
    if lock is not None:
        lock.release()
    return weights


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
