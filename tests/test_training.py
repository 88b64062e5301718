"""Discriminator training (mmdisco.training): global-batch semantics over processes, exact resume
after kill -9, EMA / gradient clipping / logs, and the pieces they rest on."""

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from mmdisco import IndependentBases, JointLoss
from mmdisco.bases.protocol import DiffusionBase
from mmdisco.config import check_train_config
from mmdisco.guidance import residual
from mmdisco.io import load_tensors
from mmdisco.pairs import collate_pairs
from mmdisco.schedule import NoiseSchedule
from mmdisco.seeds import StepIndices
from mmdisco.training import EMA, train

ROOT = Path(__file__).resolve().parent.parent
STEPS = 60
ARGS = [
    "base=toy",
    "data=toy_ood",
    "base.train_steps=30",
    "base.hidden=[8,16,8]",
    "base.time_dim=16",
    "base.num_samples=50",
    "fake.num_pairs=40",
    "fake.batch_size=40",
    "sampler.num_steps=10",
    f"train.steps={STEPS}",
    "train.batch_size=16",
    "train.log_every=10",
    "train.ckpt_every=10",
    "train.ema_decay=0.9",
    "train.grad_clip=0.5",
    "train.lr_decay=cosine",  # resume and two processes must continue the schedule exactly
    "device=cpu",
    "threads=1",
    "progress=false",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def run_args(run_dir, cache):
    return [*ARGS, f"run_dir={run_dir}", f"cache_dir={cache}"]


def launch(args, procs=1, popen=False):
    launcher = [sys.executable]
    if procs > 1:  # gloo on CPU, a free port
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launcher += [f"--nproc_per_node={procs}"]
    cmd = [*launcher, str(ROOT / "scripts" / "train.py"), *args]
    if popen:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache):
    """One uninterrupted single-process run (EMA and clipping on)."""
    run = tmp_path_factory.mktemp("reference")
    launch(run_args(run, cache))
    return run


# -- script runs -------------------------------------------------------------------------------
def test_two_processes_train_the_same_discriminator_as_one(reference, cache, tmp_path):
    """Same global batch over 2 gloo processes -> the same weights as 1 process, up to the float
    summation order of DDP's gradient all-reduce ((g_1 + g_2) / 2 instead of one sum over the
    batch), which is not bit-exact: allclose after 60 Adam steps."""
    launch(run_args(tmp_path, cache), procs=2)
    assert (tmp_path / "checkpoint" / "rng_rank1.safetensors").exists()  # 2 ranks did run
    for name in ("discriminator.safetensors", "discriminator_raw.safetensors"):
        a, b = load_tensors(reference / name), load_tensors(tmp_path / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f"{name}: {k}")
    rows_1, rows_2 = read_csv(reference / "train_log.csv"), read_csv(tmp_path / "train_log.csv")
    for r1, r2 in zip(rows_1, rows_2, strict=True):  # logs are global: same accuracies
        assert r1["acc_real"] == r2["acc_real"] and r1["acc_fake_t0-124"] == r2["acc_fake_t0-124"]
        assert float(r2["l_dsm"]) == pytest.approx(float(r1["l_dsm"]), rel=1e-4)


def test_kill_9_then_resume_is_bit_identical(reference, cache, tmp_path):
    proc = launch(run_args(tmp_path, cache), popen=True)
    state = tmp_path / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (tmp_path / "discriminator.safetensors").exists()  # killed mid-training
    launch(run_args(tmp_path, cache))  # resumes from the last checkpoint
    for name in ("discriminator.safetensors", "discriminator_raw.safetensors"):
        a, b = load_tensors(reference / name), load_tensors(tmp_path / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    ref_rows, rows = read_csv(reference / "train_log.csv"), read_csv(tmp_path / "train_log.csv")
    for r in ref_rows + rows:
        r.pop("pairs_per_s")
    assert rows == ref_rows  # rows written after the last checkpoint were dropped, not doubled


def test_logs_ema_and_curves(reference):
    rows = read_csv(reference / "train_log.csv")
    assert [int(r["step"]) for r in rows] == list(range(10, STEPS + 1, 10))
    buckets = ["t0-124", "t125-249", "t250-374", "t375-499"]  # 500 toy steps, 4 buckets
    expected = ["step", "loss", "l_d", "l_dsm", "acc_real", "acc_fake"]
    expected += [f"acc_{s}_{b}" for s in ("real", "fake") for b in buckets]
    expected += [
        f"{k}_{m}" for m in ("audio", "video") for k in ("res_norm", "eps_norm", "res_ratio")
    ]
    expected += ["grad_norm", "lr", "pairs_per_s"]
    assert list(rows[0]) == expected
    for r in rows:
        assert 0 <= float(r["acc_real_t0-124"]) <= 1 and float(r["pairs_per_s"]) > 0
        # the lr of the row's last step (done - 1), cosine-decayed from 1e-3 towards 0 at STEPS
        want = 1e-3 * 0.5 * (1 + math.cos(math.pi * (int(r["step"]) - 1) / STEPS))
        assert float(r["lr"]) == pytest.approx(want, rel=1e-12) and float(r["res_ratio_audio"]) > 0
        assert float(r["loss"]) == pytest.approx(float(r["l_d"]) + float(r["l_dsm"]), rel=1e-6)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (reference / "tensorboard").glob("events.out.tfevents.*")
    tags = EventAccumulator(str(events)).Reload().Tags()["scalars"]
    for tag in (
        "loss/l_d",
        "loss/l_dsm",
        "acc_by_t/real_t0-124",
        "acc_by_t/fake_t375-499",
        "residual/res_ratio_video",
        "train/lr",
        "train/pairs_per_s",
        "train/grad_norm",
    ):
        assert tag in tags, tags  # fmt: skip
    ema = load_tensors(reference / "discriminator.safetensors")
    raw = load_tensors(reference / "discriminator_raw.safetensors")
    assert ema.keys() == raw.keys() and any(not torch.equal(ema[k], raw[k]) for k in ema)
    ckpt = load_tensors(reference / "checkpoint" / "ema.safetensors")
    assert all(torch.equal(ckpt[k], ema[k]) for k in ema)  # sampling loads the EMA weights
    for png in ("train_curves.png", "accuracy_by_t.png"):
        assert (reference / png).stat().st_size > 0


def test_gradient_clipping_changes_training(tmp_path, cache):
    """In-process runs: clipping at 1e-6 changes the weights (Adam is invariant to a constant
    gradient scale, not to a per-step one), and a run config error is one clear message."""

    def cfg(run, *extra):
        with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
            return compose("train", [*run_args(tmp_path / run, cache), "train.steps=4", *extra])

    a = load_tensors(train(cfg("a", "train.grad_clip=null", "train.ema_decay=null")))
    b = load_tensors(train(cfg("b", "train.grad_clip=1e-6", "train.ema_decay=null")))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "a" / "discriminator_raw.safetensors").exists()  # EMA off: one file
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        train(cfg("c", "train.mixed_precision=fp8"))


# -- pieces ----------------------------------------------------------------------------------------
def test_process_slices_tile_the_global_batch():
    whole = list(StepIndices(100, 12, seed=3, stream=0, start=5, steps=9))
    parts = [list(StepIndices(100, 12, 3, 0, 5, 9, rank=r, world_size=3)) for r in range(3)]
    assert len(whole) == 4 and all(len(b) == 12 for b in whole)
    for step, batch in enumerate(whole):
        assert sum((p[step] for p in parts), []) == batch
    resumed = list(StepIndices(100, 12, 3, 0, 7, 9))
    assert resumed == whole[2:]  # a step's batch does not depend on where the run started


def test_train_config_errors_are_single_and_clear():
    base = OmegaConf.create(
        {"mixed_precision": "no", "steps": 10, "batch_size": 12, "log_every": 1,
         "ckpt_every": 5, "t_buckets": 4, "ema_decay": None, "grad_clip": None, "num_workers": 0}
    )  # fmt: skip
    check_train_config(base, world_size=4)
    bad = {
        "mixed_precision": ("fp8", "must be one of"),
        "batch_size": (10, "not divisible by the 4 processes"),
        "ema_decay": (1.0, "ema_decay must be in"),
        "grad_clip": (0.0, "grad_clip must be > 0"),
        "lr_decay": ("linear", "lr_decay must be null or one of"),
        "t_buckets": (0, "t_buckets must be >= 1"),
    }
    for key, (value, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            check_train_config(OmegaConf.merge(base, {key: value}), world_size=4)


def test_ema_follows_its_formula():
    m = nn.Linear(2, 1)
    ema = EMA(m, 0.75)
    w0 = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m)
    torch.testing.assert_close(ema.shadow["weight"], 0.75 * w0 + 0.25 * (w0 + 1.0))


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.SiLU(), nn.Linear(16, 1))

    def forward(self, audio, video, t, cond=None):
        return self.net(torch.cat([audio, video], 1))[:, 0]


class ScaledBase(DiffusionBase):
    def __init__(self):
        super().__init__()
        self.schedule = NoiseSchedule.ddpm("linear", 100, 1e-4, 0.02)

    def model_output(self, x_t, t, emb):
        return 0.1 * x_t

    def sample_shape(self, b):
        return (b, 1)


def toy_bases():
    b = ScaledBase()
    return IndependentBases(audio=b, video=b)


def test_loss_over_slices_averages_to_the_global_loss():
    """Two halves of a global batch with the halves of its draws: the mean of their losses is the
    loss of the whole batch, so DDP's gradient average equals the one-process gradient."""
    g = torch.Generator().manual_seed(0)
    real = {m: torch.randn(8, 1, generator=g) for m in ("audio", "video")}
    fake = {m: torch.randn(8, 1, generator=g) for m in ("audio", "video")}
    d, bases, loss = Pair(), toy_bases(), JointLoss(lambda_dsm=0.5)
    shapes = {m: (8, 1) for m in real}
    draws = loss.draw(100, shapes, shapes, generator=torch.Generator().manual_seed(1))
    whole = loss(d, bases, real, fake, draws=draws)["loss"]
    halves = [
        loss(d, bases, {m: x[s] for m, x in real.items()}, {m: x[s] for m, x in fake.items()},
             draws=draws.slice(s.start, s.stop))["loss"]
        for s in (slice(0, 4), slice(4, 8))
    ]  # fmt: skip
    torch.testing.assert_close((halves[0] + halves[1]) / 2, whole)


def test_fp32_residual_under_bf16_autocast():
    d = Pair()
    sched = NoiseSchedule.ddpm("linear", 100, 1e-4, 0.02)
    xs = {m: torch.randn(4, 1) for m in ("audio", "video")}
    t = torch.tensor([1, 20, 50, 99])
    ref, _ = residual(d, xs, t, {"audio": sched, "video": sched})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        exact, logit = residual(d, xs, t, {"audio": sched, "video": sched}, fp32=True)
        low, low_logit = residual(d, xs, t, {"audio": sched, "video": sched})
    assert logit.dtype == torch.float32 and low_logit.dtype == torch.bfloat16
    for m in xs:
        assert torch.equal(exact[m], ref[m]) and not torch.equal(low[m].float(), ref[m])


def test_collate_pairs():
    listed = collate_pairs(
        [{"audio": torch.ones(1), "caption": "a"}, {"audio": torch.zeros(1), "caption": "b"}]
    )
    assert listed["caption"] == ["a", "b"] and listed["audio"].shape == (2, 1)
    with pytest.raises(ValueError, match="different keys"):
        collate_pairs([{"audio": torch.ones(1)}, {"audio": torch.ones(1), "caption": "x"}])
