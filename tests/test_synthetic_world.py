"""The synthetic world matches issue 5: palette, disk pixels, tone samples, onset timing, files."""

import csv
import json

import numpy as np
import pytest

from mmdisco.data import synthetic as W
from mmdisco.media import read_video_with_audio


def test_constants_match_the_issue_table():
    assert W.CLASS_NAMES == ("red", "green", "blue", "yellow")
    assert W.PALETTE.tolist() == [[230, 40, 40], [40, 200, 60], [50, 90, 240], [230, 210, 40]]
    assert W.TONES_HZ.tolist() == [330.0, 523.0, 784.0, 1175.0]
    assert (W.FPS, W.NUM_FRAMES, W.FRAME_SIZE, W.SAMPLE_RATE, W.NUM_SAMPLES) == (
        8, 8, 32, 16_000, 16_000,
    )
    assert W.ONSETS == (1, 2, 3, 4, 5, 6)
    assert W.disk_mask((15, 15)).sum() == W.DISK_AREA == 81


@pytest.mark.parametrize("k, onset, center", [(0, 1, (6, 6)), (2, 4, (25, 11)), (3, 6, (17, 25))])
def test_video_pixels(k, onset, center):
    frames, _ = W.render_clip(k, onset, center)
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    assert not frames[:onset].any()  # black before the onset
    cy, cx = center
    for frame in frames[onset:]:
        lit = frame.any(axis=-1)
        assert lit.sum() == 81
        assert (frame[lit] == W.PALETTE[k]).all() and not frame[~lit].any()
        assert lit[cy, cx] and lit[cy, cx + 5] and lit[cy - 5, cx] and lit[cy + 3, cx + 4]
        assert not lit[cy, cx + 6] and not lit[cy + 4, cx + 4]  # 32 > 25: outside radius 5
        np.testing.assert_array_equal(frame, frames[onset])  # it stands still


@pytest.mark.parametrize("k, onset", [(0, 1), (1, 3), (3, 6)])
def test_audio_formula_at_sample_level(k, onset):
    _, audio = W.render_clip(k, onset, (10, 10))
    assert audio.shape == (16_000,) and audio.dtype == np.float32
    n0 = onset * 2000  # t0 = o / 8 s at 16 kHz
    assert not audio[: n0 + 1].any()  # silence, and sin(0) = 0 at t0
    assert audio[n0 + 1] != 0
    f = [330.0, 523.0, 784.0, 1175.0][k]
    for n in (n0 + 1, n0 + 37, n0 + 1234, 15_999):
        tau = (n - n0) / 16_000
        expected = 0.5 * np.sin(2 * np.pi * f * tau) * np.exp(-tau / 0.12)
        assert audio[n] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("args", [(4, 1, (10, 10)), (0, 0, (10, 10)), (0, 7, (10, 10)),
                                  (0, 1, (5, 10)), (0, 1, (10, 26))])
def test_render_rejects_clips_outside_the_world(args):
    with pytest.raises(ValueError):
        W.render_clip(*args)


def test_sampled_parameters_cover_the_world_uniformly():
    rng = np.random.default_rng(0)
    draws = [W.sample_clip_params(rng) for _ in range(2400)]
    ks = np.bincount([d[0] for d in draws], minlength=4)
    onsets = np.bincount([d[1] for d in draws], minlength=7)[1:]
    centers = np.array([d[2] for d in draws])
    assert ks.min() > 500 and onsets.min() > 330  # expected 600 and 400
    assert centers.min() == 6 and centers.max() == 25
    assert W.clip_params(3, 5) == W.clip_params(3, 5) != W.clip_params(4, 5)


def test_generate_dataset_files_metadata_determinism_resume(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    csv_path = W.generate_dataset(a, 6, seed=7, progress=False)
    rows = list(csv.DictReader(open(csv_path)))
    assert list(rows[0]) == ["file", "caption", "onset"] and len(rows) == 6
    for i, row in enumerate(rows):
        k, onset, center = W.clip_params(7, i)
        assert row == {"file": f"{i:06d}.mp4", "caption": W.CLASS_NAMES[k], "onset": str(onset)}
        frames, fps, audio, sr = read_video_with_audio(a / row["file"], mono=True)
        ref_frames, ref_audio = W.render_clip(k, onset, center)
        assert fps == 8 and sr == 16_000 and audio.shape == (16_000,)
        assert np.abs(frames.astype(int) - ref_frames).max() <= 2
        assert np.corrcoef(audio, ref_audio)[0, 1] > 0.999

    W.generate_dataset(b, 6, seed=7, progress=False)
    assert all((a / r["file"]).read_bytes() == (b / r["file"]).read_bytes() for r in rows)

    (a / "000003.mp4").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in a.glob("*.mp4")}
    W.generate_dataset(a, 6, seed=7, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in a.glob("*.mp4")}
    assert after.keys() == before.keys() | {"000003.mp4"}
    assert all(after[n] == t for n, t in before.items())  # complete files are skipped
    assert (a / "000003.mp4").read_bytes() == (b / "000003.mp4").read_bytes()
    assert json.loads((a / "world.json").read_text()) == {"seed": 7}
    assert not list(a.glob(".*"))  # no temporary left
    with pytest.raises(ValueError, match="seed 7"):
        W.generate_dataset(a, 6, seed=8, progress=False)


def test_script_writes_the_data_set(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "scripts" / "make_synthetic_data.py"
    spec = importlib.util.spec_from_file_location("make_synthetic_data", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--out", str(tmp_path), "--num-clips", "2", "--seed", "3", "--no-progress"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "000000.mp4", "000001.mp4", "metadata.csv", "world.json",
    ]
