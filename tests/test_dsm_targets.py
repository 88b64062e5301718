"""Precomputed L_DSM targets (``train.dsm_draws=K``, mmdisco.pairs.dsm): the loss from stored
targets is the loss with a live base forward for the same (t, noise, prompt kept); the store is
reused, resumes after a kill, and bad K is refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_training import ARGS, launch
from tiny_pair_bases import text_bases
from torch import nn

from mmdisco import JointLoss
from mmdisco.data.paired import SyntheticPairs
from mmdisco.pairs import ShardedPairs, cache_real_latents, collate_pairs
from mmdisco.pairs.dsm import (
    DsmTargets,
    RealWithTargets,
    check_dsm_draws,
    draw_noise,
    pair_draws,
    precompute_dsm_targets,
)
from mmdisco.seeds import StepIndices, StepIndicesWithDraws
from mmdisco.training import conditions, draw_reuse_note, stored_real_draws

NUM_CLIPS, K = 5, 3
OPTS = dict(draws=K, seed=7, batch_size=4, progress=False)


class QuadraticD(nn.Module):
    """A discriminator with a non-zero double backward and a use for the pooled prompt."""

    def __init__(self):
        super().__init__()
        self.a, self.v = nn.Parameter(torch.tensor(0.3)), nn.Parameter(torch.tensor(-0.2))
        self.c = nn.Parameter(torch.tensor(0.1))

    def forward(self, audio, video, t, cond=None):
        logit = self.a * audio.square().flatten(1).mean(1)
        logit = logit + self.v * video.flatten(1).tanh().mean(1)
        if cond:
            logit = logit + self.c * sum(c.float().mean(1) for c in cond.values())
        return logit


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny text-conditional bases (AudioLDM + AnimateDiff) and a 2-shard real store."""
    tmp = tmp_path_factory.mktemp("dsm")
    bases = text_bases(tmp / "bases").eval().requires_grad_(False)
    data = SyntheticPairs(tmp / "data", num_clips=NUM_CLIPS, progress=False)
    path = cache_real_latents(data, bases, tmp / "cache", shard_size=3, progress=False)
    return bases, ShardedPairs(path)


class Counted:
    """Counts the bases' noise predictions; raises after ``fail_after`` of them."""

    def __init__(self, bases, fail_after=None):
        self.bases, self.calls, self.fail_after = bases, 0, fail_after
        self.original = bases.predict_noise

    def __enter__(self):
        def counted(*args, **kwargs):
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise KeyboardInterrupt("simulated kill")
            self.calls += 1
            return self.original(*args, **kwargs)

        self.bases.predict_noise = counted
        return self

    def __exit__(self, *exc):
        del self.bases.predict_noise  # back to the class's method


def files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if not p.name.startswith(".")}


def test_stored_targets_give_the_loss_of_a_live_base_forward(setup, tmp_path):
    bases, real = setup
    loss = JointLoss(cond_dropout=0.5, t_power=2.0)
    path = precompute_dsm_targets(real, bases, loss, cache_dir=tmp_path, **OPTS)
    data = RealWithTargets(real, DsmTargets(path))
    items = [(0, 1), (2, 0), (3, 2), (4, 1), (1, 2)]
    batch = collate_pairs([data[i] for i in items])
    for n, (i, k) in enumerate(items):  # the stored draw is the pair's own draw k
        t, keep, seeds = pair_draws(loss, 7, i, K, 1000, dropout=True)
        assert batch["dsm_t"][n] == t[k] and batch["dsm_keep"][n] == keep[k]
        noise = draw_noise(int(seeds[k]), {m: tuple(batch[m].shape[1:]) for m in real_keys()})
        assert all(torch.equal(batch[f"dsm_noise_{m}"][n], noise[m]) for m in noise)
    stored = DsmTargets(path)
    keeps = torch.stack([stored[(i, k)]["dsm_keep"] for i in range(NUM_CLIPS) for k in range(K)])
    assert keeps.any() and not keeps.all()  # prompt dropout is part of the stored draws

    real_b = {m: batch[m] for m in real_keys()}
    fake = {m: torch.randn_like(x) for m, x in real_b.items()}
    real_c = conditions(bases, batch)
    shapes = {m: tuple(x.shape) for m, x in real_b.items()}
    draws = loss.draw(1000, shapes, shapes, True, torch.Generator().manual_seed(3))
    draws, eps = stored_real_draws(draws, batch, conditional=True)
    d = QuadraticD()
    with Counted(bases) as count:
        stored = loss(d, bases, real_b, fake, real_c, real_c, draws=draws, base_eps=eps)
    assert count.calls == 0  # no base forward on a D step
    live = loss(d, bases, real_b, fake, real_c, real_c, draws=draws)
    for key in ("loss", "l_d", "l_dsm", "eps_norm_audio", "eps_norm_video"):
        torch.testing.assert_close(stored[key], live[key], rtol=1e-5, atol=1e-6)
    grads = [torch.autograd.grad(x["loss"], list(d.parameters())) for x in (stored, live)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def real_keys():
    return ("audio", "video")


def test_the_store_is_reused_and_resumes_after_a_kill(setup, tmp_path):
    bases, real = setup
    loss = JointLoss(cond_dropout=0.1)
    with Counted(bases) as count:
        reference = precompute_dsm_targets(real, bases, loss, cache_dir=tmp_path / "a", **OPTS)
    assert count.calls == 3 + 2  # shard 0: 3 pairs x 3 draws = 9 items in 3 batches; shard 1: 6
    with Counted(bases) as count:
        again = precompute_dsm_targets(real, bases, loss, cache_dir=tmp_path / "a", **OPTS)
    assert again == reference and count.calls == 0

    with pytest.raises(KeyboardInterrupt), Counted(bases, fail_after=4):
        precompute_dsm_targets(real, bases, loss, cache_dir=tmp_path / "b", **OPTS)
    killed = tmp_path / "b" / reference.name
    assert sorted(p.name for p in killed.glob("shard-*")) == ["shard-00000.safetensors"]
    with pytest.raises(FileNotFoundError, match="unfinished"):
        DsmTargets(killed)
    with Counted(bases) as count:
        resumed = precompute_dsm_targets(real, bases, loss, cache_dir=tmp_path / "b", **OPTS)
    assert count.calls == 2  # only shard 1
    assert files(resumed) == files(reference)

    other = precompute_dsm_targets(real, bases, JointLoss(t_power=2.0), cache_dir=tmp_path / "a",
                                   **OPTS)  # fmt: skip
    assert other != reference  # the t law is in the key


def test_bad_draws_are_refused_clearly(setup, tmp_path):
    loss = JointLoss()
    assert check_dsm_draws(None, loss) is None and check_dsm_draws(8, loss) == 8
    for bad in (0, -2, 2.5, "8", True):
        with pytest.raises(ValueError, match="train.dsm_draws must be an integer >= 1"):
            check_dsm_draws(bad, loss)
    with pytest.raises(ValueError, match="loss.lambda_dsm=0 has no L_DSM"):
        check_dsm_draws(4, JointLoss(lambda_dsm=0.0))
    with pytest.raises(ValueError, match="set loss.contrastive=null or train.dsm_draws=null"):
        check_dsm_draws(4, JointLoss(contrastive={"weight": 0.1, "group": 4}))
    bases, real = setup
    with pytest.raises(ValueError, match="draws must be an integer >= 1"):
        precompute_dsm_targets(real, bases, loss, cache_dir=tmp_path, draws=0)
    with pytest.raises(IndexError, match="draw 3 out of range for 3"):
        stored = precompute_dsm_targets(real, bases, loss, cache_dir=tmp_path, **OPTS)
        DsmTargets(stored)[(0, 3)]


def test_draw_sampler_keeps_the_pairs_of_each_step_and_slices_the_draws():
    plain = list(StepIndices(50, 8, 0, 0, 2, 6))
    both = list(StepIndicesWithDraws(50, 8, 0, 0, 2, 6, draws=4))
    assert [[i for i, _ in b] for b in both] == plain
    assert {k for b in both for _, k in b} <= set(range(4))
    halves = [list(StepIndicesWithDraws(50, 8, 0, 0, 2, 6, 4, rank=r, world=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == both


def test_train_py_with_dsm_draws_builds_the_store_once(tmp_path):
    cache = tmp_path / "cache"
    args = [*ARGS, "train.steps=10", "train.ckpt_every=5", "train.dsm_draws=4",
            f"cache_dir={cache}"]  # fmt: skip
    launch([*args, f"run_dir={tmp_path / 'one'}"])
    (store,) = cache.glob("dsm-*")
    before = {p.name: p.stat().st_mtime_ns for p in store.iterdir()}
    launch([*args, f"run_dir={tmp_path / 'two'}"])
    assert {p.name: p.stat().st_mtime_ns for p in store.iterdir()} == before
    a, b = ((tmp_path / r / "discriminator.safetensors").read_bytes() for r in ("one", "two"))
    assert a == b  # same seed, same stored draws: the same D


def test_heavy_reuse_of_the_stored_draws_is_flagged_with_the_k_that_fixes_it():
    assert not draw_reuse_note(800, 32, 900, 8).startswith("WARNING")  # synthetic: 3.6 uses
    note = draw_reuse_note(10000, 512, 450, 8)  # the toy: 1422 uses
    assert note.startswith("WARNING") and "use train.dsm_draws >= 1423" in note
