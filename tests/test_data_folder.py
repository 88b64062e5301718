"""PairedVideoFolder: decoding to the bases' fps / size / rate, and skipping bad clips."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmdisco.data.folder import PairedVideoFolder, Skipped, collate_clips
from mmdisco.media import write_video_with_audio

OUT = dict(fps=8, size=(16, 24), sample_rate=16_000)  # what the loader must produce


def ramp_clip(seconds: float, fps: float, h: int, w: int, sr: int, tone_hz: float, channels=1):
    """Frames whose red level is 250 * t / 2 s (time is readable from a frame), a tone."""
    n = round(seconds * fps)
    frames = np.zeros((n, h, w, 3), np.uint8)
    frames[..., 0] = np.round(250 * np.arange(n) / fps / 2.0).astype(np.uint8)[:, None, None]
    frames[..., 1] = 128
    t = np.arange(round(seconds * sr)) / sr
    audio = (0.4 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
    return frames, (np.stack([audio] * channels) if channels > 1 else audio)


def write_csv(path: Path, rows: list[dict], columns=("path", "caption", "start")) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """3 good clips (different fps, sizes, rates, channels) + corrupt, silent, too short."""
    root = tmp_path_factory.mktemp("clips")
    specs = {  # name: (seconds, fps, h, w, sr, tone, channels)
        "a.mp4": (1.5, 24, 30, 40, 44_100, 440.0, 2),
        "b.mp4": (1.6, 10, 36, 20, 22_050, 1000.0, 1),
        "c.mp4": (1.0, 8, 32, 32, 16_000, 700.0, 1),
        "short.mp4": (0.5, 8, 32, 32, 16_000, 500.0, 1),
    }
    for name, (sec, fps, h, w, sr, tone, ch) in specs.items():
        frames, audio = ramp_clip(sec, fps, h, w, sr, tone, ch)
        write_video_with_audio(root / name, frames, fps, audio, sr)
    frames, audio = ramp_clip(1.0, 8, 32, 32, 16_000, 500.0)
    write_video_with_audio(root / "silent.mp4", frames, 8, np.zeros_like(audio), 16_000)
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    write_csv(
        root / "clips.csv",
        [
            {"path": "a.mp4", "caption": "a dog barks", "start": 0},
            {"path": "corrupt.mp4", "caption": "noise", "start": 0},
            {"path": "b.mp4", "caption": "rain", "start": 0.5},
            {"path": "silent.mp4", "caption": "nothing", "start": 0},
            {"path": "c.mp4", "caption": "a car", "start": 0},
            {"path": "short.mp4", "caption": "a bell", "start": 0},
        ],
    )
    return root


def dominant_hz(audio: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / sr)[spectrum.argmax()])


def test_decodes_to_the_requested_fps_size_and_rate_and_skips_bad_clips(folder, caplog):
    data = PairedVideoFolder(folder, "clips.csv", duration=1.0, start_column="start", **OUT)
    assert len(data) == 6 and data.captions[2] == "rain"
    with caplog.at_level(logging.WARNING, logger="mmdisco.data.folder"):
        items = [data[i] for i in range(len(data))]
    good = {0: ("a", 440.0), 2: ("b", 1000.0), 4: ("c", 700.0)}
    for i, (_, tone) in good.items():
        x = items[i]
        assert x["video"].shape == (8, 16, 24, 3) and x["video"].dtype == torch.uint8
        assert x["audio"].shape == (16_000,) and x["audio"].dtype == torch.float32
        assert abs(dominant_hz(x["audio"].numpy(), 16_000) - tone) < 3
        assert x["index"] == i and x["caption"] == data.captions[i]
    # the window starts at the CSV's start: b's first frame is the one at 0.5 s (red 62.5)
    assert abs(float(items[2]["video"][0, ..., 0].float().mean()) - 62.5) < 3
    assert abs(float(items[0]["video"][0, ..., 0].float().mean())) < 3  # a starts at 0 s
    # frame j of the 8 fps output is the latest source frame at or before j / 8 s
    a_red = items[0]["video"][:, 8, 12, 0].float().numpy()
    np.testing.assert_allclose(a_red, 250 * np.floor(np.arange(8) / 8 * 24) / 24 / 2, atol=3)
    skipped = {i: x for i, x in enumerate(items) if isinstance(x, Skipped)}
    assert {i: x.kind for i, x in skipped.items()} == {
        1: "unreadable",
        3: "silent",
        5: "too_short",
    }
    assert "RMS" in skipped[3].reason and "shorter" in skipped[5].reason
    summary = data.report()
    assert summary["skipped"] == 3 and summary["clips"] == 6
    assert summary["reasons"] == {"unreadable": 1, "too_short": 1, "silent": 1}
    assert sorted(Path(p).name for p, _ in summary["files"]) == [
        "corrupt.mp4",
        "short.mp4",
        "silent.mp4",
    ]
    logged = " ".join(r.getMessage() for r in caplog.records)
    for name in ("corrupt.mp4", "silent.mp4", "short.mp4", "skipped 3 of 6"):
        assert name in logged


def test_dataloader_workers_drop_skipped_clips_and_report_them(folder):
    data = PairedVideoFolder(folder, "clips.csv", duration=1.0, **OUT)
    loader = DataLoader(data, batch_size=4, num_workers=2, collate_fn=collate_clips)
    batches = list(loader)
    assert data.skipped == {}  # the workers' copies skipped them, not this one
    for b in batches:
        data.note_skipped(b["skipped"])
    assert [b["video"].shape[0] for b in batches] == [2, 1]
    assert batches[0]["video"].shape == (2, 8, 16, 24, 3)
    assert batches[0]["audio"].shape == (2, 16_000)
    assert torch.cat([b["index"] for b in batches]).tolist() == [0, 2, 4]
    assert data.summary()["skipped"] == 3


def test_for_media_format_takes_fps_size_rate_from_the_bases_and_checks_the_window(folder):
    fmt = dict(fps=8, height=16, width=24, num_frames=8, sample_rate=16_000, num_samples=16_000)
    data = PairedVideoFolder(folder, folder / "clips.csv", duration=1.0)
    with pytest.raises(ValueError, match="data.fps is not set"):
        data[0]
    data.for_media_format(fmt)
    assert (data.fps, data.size, data.sample_rate) == (8.0, (16, 24), 16_000)
    assert data[4]["video"].shape == (8, 16, 24, 3)
    long = PairedVideoFolder(folder, "clips.csv", duration=2.0)
    with pytest.raises(ValueError, match="gives 16 frames, but the base model takes 8"):
        long.for_media_format(fmt)
    other = PairedVideoFolder(folder, "clips.csv", duration=1.0, fps=10)
    with pytest.raises(ValueError, match="data.fps=10.0 differs"):
        other.for_media_format(fmt)


def test_filters_keep_list_path_format_and_headerless_csv(folder, tmp_path):
    (tmp_path / "keep.txt").write_text("a\nc.mp4\n")
    rows = tmp_path / "vgg.csv"  # VGGSound's own layout: no header, (ytid, start, label, split)
    rows.write_text("a,0,dog,train\nb,0,rain,test\nc,0,car,train\nshort,0,bell,train\n")
    data = PairedVideoFolder(
        folder,
        rows,
        duration=1.0,
        path_column=None,
        path_format="{ytid}.mp4",
        caption_column="label",
        fieldnames=["ytid", "start_seconds", "label", "split"],
        keep_list=tmp_path / "keep.txt",
        where={"split": "train"},
        **OUT,
    )
    assert [r["path"] for r in data.rows] == ["a.mp4", "c.mp4"]
    assert data.captions == ["dog", "car"] and data[1]["video"].shape == (8, 16, 24, 3)


def test_one_clear_error_per_bad_input(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="data.root"):
        PairedVideoFolder(tmp_path / "nowhere", "clips.csv", duration=1.0)
    with pytest.raises(FileNotFoundError, match="data.csv missing.csv not found"):
        PairedVideoFolder(folder, "missing.csv", duration=1.0)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['label'\]"):
        PairedVideoFolder(folder, "clips.csv", duration=1.0, caption_column="label")
    for bad in (0, -1.0, None):
        with pytest.raises(ValueError, match="data.duration must be a positive"):
            PairedVideoFolder(folder, "clips.csv", duration=bad)
    write_csv(tmp_path / "empty.csv", [])
    with pytest.raises(ValueError, match="lists no clip"):
        PairedVideoFolder(folder, tmp_path / "empty.csv", duration=1.0)
    write_csv(tmp_path / "bad_start.csv", [{"path": "a.mp4", "caption": "x", "start": "soon"}])
    with pytest.raises(ValueError, match="'soon' is not a number"):
        PairedVideoFolder(folder, tmp_path / "bad_start.csv", duration=1.0, start_column="start")
