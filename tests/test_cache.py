"""The real-latent cache: sharded, rank-split, reused, resumable; ShardedPairs reads it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_pair_bases import synthetic_bases, text_bases
from torch.utils.data import DataLoader

from mmdisco.data.paired import SyntheticPairs, read_clip
from mmdisco.pairs import ShardedPairs, batch_conditions, cache_real_latents
from mmdisco.pairs.store import INDEX_FILE, shard_name

NUM_CLIPS, CORRUPT = 10, 4  # clip 4 is overwritten with garbage: shard 1 holds 2 pairs
OPTS = dict(shard_size=3, batch_size=2, progress=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    SyntheticPairs(root, num_clips=NUM_CLIPS, progress=False).ensure_generated()
    (root / f"{CORRUPT:06d}.mp4").write_bytes(b"not an mp4 at all" * 100)
    return root


@pytest.fixture(scope="module")
def bases():
    return synthetic_bases()


class Killed(Exception):
    pass


class EncodeCounter:
    """Counts (and optionally fails) the bases' media encoders."""

    def __init__(self, bases, fail_after: int | None = None):
        self.calls, self.fail_after = 0, fail_after
        for m in ("audio", "video"):
            base = bases[m]
            base.__dict__.pop("encode", None)
            base.encode = self._wrap(type(base).encode.__get__(base))

    def _wrap(self, encode):
        def counted(media):
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise Killed("simulated kill")
            self.calls += 1
            return encode(media)

        return counted


def shard_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if not p.name.startswith(".")}


def test_one_rank_cache_is_readable_and_holds_the_encoded_clips(data_dir, bases, tmp_path):
    data = SyntheticPairs(data_dir, num_clips=NUM_CLIPS, progress=False)
    path = cache_real_latents(data, bases, tmp_path, **OPTS)
    assert path.parent == tmp_path and path.name.startswith("latents-")
    index = json.loads((path / INDEX_FILE).read_text())
    assert index["counts"] == [3, 2, 3, 1] and index["total"] == NUM_CLIPS - 1
    assert [Path(s[1]).name for s in index["skipped"]] == [f"{CORRUPT:06d}.mp4"]
    assert data.summary()["skipped"] == 1 and data.summary()["reasons"] == {"unreadable": 1}
    pairs = ShardedPairs(path, max_open_shards=2)
    assert len(pairs) == NUM_CLIPS - 1
    rows = [r for i, r in enumerate(data.rows()) if i != CORRUPT]
    assert pairs.captions == [r["caption"] for r in rows]
    for i in (0, 4, 8):  # clip 5 is pair 4 (after the corrupt clip 4)
        frames, audio = read_clip(data_dir / rows[i]["file"])
        sample = pairs[i]
        assert sample.keys() == {"audio", "video", "caption"}  # unconditional bases
        torch.testing.assert_close(sample["audio"], bases["audio"].encode(audio[None])[0])
        torch.testing.assert_close(sample["video"], bases["video"].encode(frames[None])[0])
    assert len(pairs._open) <= 2
    batch = next(iter(DataLoader(pairs, batch_size=4, shuffle=True, num_workers=0)))
    assert batch["audio"].shape == (4, 1, 64, 64) and batch["video"].shape == (4, 3, 8, 16, 16)
    assert batch_conditions(bases, batch) == {"audio": None, "video": None}
    everything = pairs.load_all()
    torch.testing.assert_close(everything["video"][4], pairs[4]["video"])


def test_two_ranks_equal_one_and_a_second_call_reuses_the_cache(data_dir, bases, tmp_path):
    one = cache_real_latents(
        SyntheticPairs(data_dir, num_clips=NUM_CLIPS, progress=False),
        bases,
        tmp_path / "a",
        **OPTS,
    )
    data = SyntheticPairs(data_dir, num_clips=NUM_CLIPS, progress=False)
    counter = EncodeCounter(bases)
    two = cache_real_latents(data, bases, tmp_path / "b", rank=0, world_size=2, **OPTS)
    assert not (two / INDEX_FILE).exists()  # rank 1's shards are missing
    assert sorted(p.name for p in two.glob("shard-*")) == [shard_name(0), shard_name(2)]
    with pytest.raises(FileNotFoundError, match="missing shards: \\['shard-00001"):
        ShardedPairs(two)
    calls_rank0 = counter.calls
    cache_real_latents(data, bases, tmp_path / "b", rank=1, world_size=2, **OPTS)
    assert calls_rank0 == 2 * 4 and counter.calls == 2 * 7  # 2 encoders x batches per shard
    assert two.name == one.name and shard_files(two) == shard_files(one)
    counter.calls = 0
    again = cache_real_latents(data, bases, tmp_path / "b", **OPTS)
    assert again == two and counter.calls == 0
    with pytest.raises(ValueError, match="rank must be in"):
        cache_real_latents(data, bases, tmp_path / "c", rank=2, world_size=2, **OPTS)


def test_a_killed_write_resumes_at_the_next_missing_shard(data_dir, bases, tmp_path):
    reference = cache_real_latents(
        SyntheticPairs(data_dir, num_clips=NUM_CLIPS, progress=False),
        bases,
        tmp_path / "ref",
        **OPTS,
    )
    data = SyntheticPairs(data_dir, num_clips=NUM_CLIPS, progress=False)
    counter = EncodeCounter(bases, fail_after=9)  # dies in shard 2 (its 9th encoder call)
    with pytest.raises(Killed):
        cache_real_latents(data, bases, tmp_path / "run", **OPTS)
    path = tmp_path / "run" / reference.name
    assert sorted(p.name for p in path.glob("shard-*")) == [shard_name(0), shard_name(1)]
    counter.fail_after, counter.calls = None, 0
    cache_real_latents(data, bases, tmp_path / "run", **OPTS)
    assert counter.calls == 2 * 3  # shards 2 (2 batches) and 3 (1 batch) only
    assert shard_files(path) == shard_files(reference)


def test_a_different_window_or_base_is_a_different_cache(data_dir, bases, tmp_path):
    data = SyntheticPairs(data_dir, num_clips=NUM_CLIPS, progress=False)
    a = cache_real_latents(data, bases, tmp_path, base_config={"name": "x"}, **OPTS)
    b = cache_real_latents(data, bases, tmp_path, base_config={"name": "y"}, **OPTS)
    fewer = SyntheticPairs(data_dir, num_clips=NUM_CLIPS - 1, progress=False)
    c = cache_real_latents(fewer, bases, tmp_path, base_config={"name": "x"}, **OPTS)
    assert len({a, b, c}) == 3 and len(ShardedPairs(c)) == NUM_CLIPS - 2


def test_text_conditional_bases_store_prompt_embeddings(data_dir, tmp_path):
    bases = text_bases(tmp_path)
    data = SyntheticPairs(data_dir, num_clips=6, progress=False)
    pairs = ShardedPairs(cache_real_latents(data, bases, tmp_path / "cache", **OPTS))
    assert len(pairs) == 5 and pairs.index["conditional"] == ["audio", "video"]
    sample = pairs[3]
    assert sample["audio"].shape == bases["audio"].sample_shape(1)[1:]
    assert sample["video"].shape == bases["video"].sample_shape(1)[1:]
    for m in ("audio", "video"):
        expected = bases[m].encode_prompt([sample["caption"]])
        torch.testing.assert_close(sample[f"{m}_cond"], expected.cond[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sample[f"{m}_pooled"], expected.pooled[0], atol=1e-5, rtol=1e-5)
    batch = next(iter(DataLoader(pairs, batch_size=5)))
    conds = batch_conditions(bases, batch)
    assert conds["audio"].cond.shape == (5, 8) and conds["video"].cond.shape == (5, 16, 32)
    assert conds["audio"].guidance_scale == 2.5 and conds["video"].guidance_scale == 7.5
    empty = bases["video"].encode_prompt([""])
    assert torch.equal(conds["video"].uncond, empty.uncond)
    assert torch.equal(conds["video"].pooled_uncond, empty.pooled_uncond)
    t = torch.full((5,), 500)
    eps = bases.predict_noise({m: batch[m] for m in ("audio", "video")}, t, conds)
    assert all(torch.isfinite(e).all() for e in eps.values())
    captions = np.array(batch["caption"])
    same = np.flatnonzero(captions == captions[0])  # equal captions share one table row
    assert all(torch.equal(conds["video"].cond[i], conds["video"].cond[same[0]]) for i in same)
