"""SyntheticPairs: generation on first use, reading + encoding, skipping corrupt clips, configs."""

import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mmdisco.bases import IndependentBases
from mmdisco.bases.synthetic import SyntheticAudioBase, SyntheticVideoBase
from mmdisco.data import synthetic as W
from mmdisco.data.paired import SyntheticPairs
from mmdisco.metrics import evaluate
from mmdisco.pairs import ShardedPairs, cache_real_latents

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
TINY = dict(block_out_channels=(8, 16), norm_num_groups=4, mid_attention=False)


@pytest.fixture(scope="module")
def bases():
    torch.manual_seed(0)
    return IndependentBases(
        audio=SyntheticAudioBase.create(**TINY), video=SyntheticVideoBase.create(**TINY)
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Five clips, written once for the module (each test copies what it corrupts)."""
    path = tmp_path_factory.mktemp("synthetic")
    W.generate_dataset(path, 5, seed=3, progress=False)
    return path


def stored_pairs(data, bases, cache_dir: Path) -> dict:
    """The real pairs as the pair store encodes them (the one path to real latents)."""
    return ShardedPairs(cache_real_latents(data, bases, cache_dir, progress=False)).load_all()


def copy_dataset(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_generates_the_data_set_when_missing(tmp_path, bases):
    data = SyntheticPairs(tmp_path / "d", num_clips=3, seed=3, progress=False)
    pairs = stored_pairs(data, bases, tmp_path / "cache")
    assert (tmp_path / "d" / "metadata.csv").exists()
    assert len(list((tmp_path / "d").glob("*.mp4"))) == 3
    assert pairs["audio"].shape == bases["audio"].sample_shape(3)
    assert pairs["video"].shape == bases["video"].sample_shape(3)
    assert data.skipped == []


def test_reads_and_encodes_like_the_bases(data_dir, bases, tmp_path):
    data = SyntheticPairs(data_dir, num_clips=5, seed=3, progress=False, batch_size=2)
    pairs = stored_pairs(data, bases, tmp_path)
    frames, audio, rows = data.load_media()
    assert [r["file"] for r in rows] == [W.clip_filename(i) for i in range(5)]
    assert torch.allclose(pairs["video"], bases["video"].encode(frames))
    assert torch.allclose(pairs["audio"], bases["audio"].encode(audio), atol=1e-5)
    # clip i is the world's clip (seed, i): class and onset survive the mp4 round trip
    k, onset, center = W.clip_params(3, 0)
    assert abs(frames[0].astype(int) - W.render_video(k, onset, center)).max() <= 2
    assert rows[0]["caption"] == W.CLASS_NAMES[k] and int(rows[0]["onset"]) == onset


def test_fewer_clips_than_listed_uses_the_first(data_dir, bases, tmp_path):
    data = SyntheticPairs(data_dir, num_clips=2, seed=3, progress=False)
    pairs = stored_pairs(data, bases, tmp_path)
    assert pairs["video"].shape[0] == 2


def test_corrupt_and_missing_clips_are_skipped_and_counted(data_dir, tmp_path, bases, caplog):
    d = copy_dataset(data_dir, tmp_path / "d")
    (d / W.clip_filename(1)).write_bytes(b"not an mp4 at all" * 100)
    (d / W.clip_filename(3)).unlink()
    data = SyntheticPairs(d, num_clips=5, seed=3, progress=False)
    with caplog.at_level(logging.WARNING, logger="mmdisco.data.paired"):
        frames, audio, rows = data.load_media()
    assert len(frames) == len(audio) == len(rows) == 3
    assert [p.name for p, _ in data.skipped] == [W.clip_filename(1), W.clip_filename(3)]
    assert "no such file" in data.skipped[1][1]
    assert W.clip_filename(1) in caplog.text and "skipped 2 of 5" in caplog.text


def test_nothing_readable_is_an_error(data_dir, tmp_path, bases):
    d = copy_dataset(data_dir, tmp_path / "d")
    for f in d.glob("*.mp4"):
        f.write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="no readable clip"):
        SyntheticPairs(d, num_clips=5, seed=3, progress=False).load_media()


def test_evaluate_real_clips_are_valid_and_aligned(data_dir):
    data = SyntheticPairs(data_dir, num_clips=5, seed=3, progress=False)
    metrics = evaluate(data, data_dir)
    assert metrics["num_clips"] == 5
    assert metrics["audio_valid"] == metrics["video_valid"] == 1.0
    assert metrics["semantic_and_temporal"] == 1.0


def test_hydra_configs_instantiate(tmp_path):
    torch.manual_seed(0)
    SyntheticAudioBase.create(**TINY).save_pretrained(tmp_path / "a")
    SyntheticVideoBase.create(**TINY).save_pretrained(tmp_path / "v")
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "base=synthetic",
                "data=synthetic",
                f"base.audio.pretrained={tmp_path / 'a'}",
                f"base.video.pretrained={tmp_path / 'v'}",
                f"cache_dir={tmp_path / 'cache'}",
            ],
        )
    bases = instantiate(cfg.base)
    assert isinstance(bases, IndependentBases)
    assert isinstance(bases["audio"], SyntheticAudioBase)
    assert isinstance(bases["video"], SyntheticVideoBase)
    data = instantiate(cfg.data)
    assert isinstance(data, SyntheticPairs) and data.name == "synthetic"
    assert data.data_dir == tmp_path / "cache" / "synthetic_data"
