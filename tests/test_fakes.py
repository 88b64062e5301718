"""Fake-pair pre-sampling: kill -9 and resume, ranks, prompts and their conditions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_pair_bases import synthetic_bases, text_bases

from mmdisco.pairs import ShardedPairs, batch_conditions
from mmdisco.pairs.fakes import presample_fakes, sample_seed, shard_prompts
from mmdisco.pairs.store import INDEX_FILE, shard_name
from mmdisco.sampling import JointSampler

TESTS = Path(__file__).resolve().parent
CAPTIONS = ["red", "green", "blue", "yellow"]
SAMPLER = {"solver": "ddpm", "num_steps": 3}  # ancestral: fresh noise at every step
OPTS = dict(num_pairs=10, seed=3, shard_size=2, batch_size=2)

CHILD = f"""
import sys, time
sys.path.insert(0, {str(TESTS)!r})
import torch
torch.set_num_threads(1)
from tiny_pair_bases import synthetic_bases
import mmdisco.sampling
from mmdisco.pairs.fakes import presample_fakes
from mmdisco.sampling import JointSampler

sample = mmdisco.sampling.JointSampler.sample
def slow_sample(self, *args, **kwargs):  # slow enough to be killed between shards
    time.sleep(0.4)
    return sample(self, *args, **kwargs)
if sys.argv[2] == "slow":
    mmdisco.sampling.JointSampler.sample = slow_sample
bases = synthetic_bases()
presample_fakes(bases, {CAPTIONS!r}, cache_dir=sys.argv[1], progress=False,
                sampler=JointSampler(bases, **{SAMPLER!r}), **{OPTS!r})
"""


@pytest.fixture(scope="module")
def bases():
    return synthetic_bases()


@pytest.fixture(scope="module")
def reference(bases, tmp_path_factory) -> Path:
    """An uninterrupted single-rank run."""
    return fakes(bases, tmp_path_factory.mktemp("ref"))


def fakes(bases, cache_dir: Path, **opts) -> Path:
    sampler = JointSampler(bases, **SAMPLER)
    return presample_fakes(
        bases, CAPTIONS, cache_dir=cache_dir, sampler=sampler, progress=False, **{**OPTS, **opts}
    )


def files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if not p.name.startswith(".")}


def test_kill_9_mid_run_then_restart_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    """Three fresh processes with one setup (CPU kernels and their rounding depend on the
    process's thread history): uninterrupted; killed after 2 of 5 shards; restarted."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def child(cache_dir: Path, speed: str) -> subprocess.Popen:
        cmd = [sys.executable, "-c", CHILD, str(cache_dir), speed]
        return subprocess.Popen(cmd, env=env)

    assert child(tmp_path / "ref", "fast").wait() == 0
    (reference,) = (tmp_path / "ref").glob("fakes-*")
    run = child(tmp_path / "run", "slow")
    out = tmp_path / "run" / reference.name
    deadline = time.monotonic() + 180
    while len(list(out.glob("shard-*"))) < 2 and run.poll() is None:
        assert time.monotonic() < deadline, "the child wrote no shard in time"
        time.sleep(0.02)
    os.kill(run.pid, signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    written = sorted(p.name for p in out.glob("shard-*"))
    assert 2 <= len(written) < 5 and not (out / INDEX_FILE).exists()
    assert written == [shard_name(s) for s in range(len(written))]
    assert child(tmp_path / "run", "fast").wait() == 0
    assert files(out) == files(reference)


def test_two_ranks_write_the_same_pairs_as_one(bases, reference, tmp_path):
    for rank in (1, 0):
        path = fakes(bases, tmp_path, rank=rank, world_size=2)
    assert files(path) == files(reference)
    other_seed = fakes(bases, tmp_path, seed=4)
    assert other_seed != path
    a, b = ShardedPairs(path).load_all(), ShardedPairs(other_seed).load_all()
    assert not torch.allclose(a["video"], b["video"])


def test_pairs_are_independent_samples_with_their_own_seeded_noise(bases, reference):
    pairs = ShardedPairs(reference)
    assert len(pairs) == 10 and set(pairs.captions) <= set(CAPTIONS)
    assert pairs.captions[4:6] == shard_prompts(CAPTIONS, OPTS["seed"], 2, 2)
    assert "audio_cond" not in pairs[0]  # unconditional bases: the prompt is only recorded
    sampler = JointSampler(bases, **SAMPLER)
    gen = torch.Generator().manual_seed(sample_seed(OPTS["seed"], 5))
    alone = sampler.sample(1, generator=[gen])  # pair 5 drawn in a batch of its own
    for m in ("audio", "video"):
        torch.testing.assert_close(pairs[5][m], alone[m][0], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(pairs[4]["video"], pairs[5]["video"])


def test_text_conditional_bases_sample_with_the_stored_prompt_conditions(tmp_path):
    bases = text_bases(tmp_path)
    captions = ["a dog barks", "rain", "a car"]
    opts = dict(seed=0, sampler=JointSampler(bases, solver="ddim", num_steps=2), shard_size=2)
    path = presample_fakes(bases, captions, 3, tmp_path, batch_size=2, progress=False, **opts)
    pairs = ShardedPairs(path)
    assert pairs.index["conditional"] == ["audio", "video"]
    assert pairs.captions == shard_prompts(captions, 0, 0, 2) + shard_prompts(captions, 0, 1, 1)
    for i in range(3):
        for m in ("audio", "video"):
            expected = bases[m].encode_prompt([pairs.captions[i]])
            torch.testing.assert_close(pairs[i][f"{m}_cond"], expected.cond[0], atol=1e-5, rtol=0)
    # shard 0 again, by hand, from what the cache stores: the same bits
    batch = torch.utils.data.default_collate([pairs[0], pairs[1]])
    gens = [torch.Generator().manual_seed(sample_seed(0, i)) for i in (0, 1)]
    sampler = JointSampler(bases, solver="ddim", num_steps=2)
    again = sampler.sample(2, conds=batch_conditions(bases, batch), generator=gens)
    for m in ("audio", "video"):
        assert torch.equal(again[m], batch[m])
    assert batch_conditions(bases, batch)["video"].guidance_scale == 7.5


def test_per_batch_seeding_draws_batch_j_from_one_generator_seeded_seed_plus_j(bases, tmp_path):
    """The toy's historic draw (Table 1): batch j of B pairs from ``Generator(seed + j)``; the
    shard size (3) is rounded up to whole batches (4)."""
    path = fakes(bases, tmp_path, seeding="per_batch", batch_size=4, shard_size=3)
    pairs = ShardedPairs(path).load_all()
    assert len(list(path.glob("shard-*"))) == 3  # 10 pairs in shards of 4, 4, 2
    sampler = JointSampler(bases, **SAMPLER)
    for j, (first, n) in enumerate([(0, 4), (4, 4), (8, 2)]):
        gen = torch.Generator().manual_seed(OPTS["seed"] + j)
        alone = sampler.sample(n, generator=gen)
        for m in ("audio", "video"):
            torch.testing.assert_close(pairs[m][first : first + n], alone[m])
    with pytest.raises(ValueError, match="fake.seeding must be one of"):
        fakes(bases, tmp_path, seeding="per_sample")
