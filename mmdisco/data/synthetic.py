"""The synthetic audio-video world of issue 5: a coloured disk appears as a tone starts.

Each clip lasts 1.0 s: video 8 frames at 8 fps, 32x32 RGB on black; audio 16 kHz mono.
A clip has a class k in {0, 1, 2, 3} and an onset frame o in {1, ..., 6}, both uniform:

- video: frames 0..o-1 are black; from frame o on, a filled disk of radius 5 px in colour
  ``PALETTE[k]`` stands still at a centre with both coordinates in [6, 25];
- audio: silence before t0 = o / 8 s, then 0.5 sin(2 pi f_k (t - t0)) exp(-(t - t0) / 0.12)
  with f_k = ``TONES_HZ[k]``.

A real pair shares k (colour <-> pitch, the semantic alignment) and o (appearance <-> onset,
the temporal one). ``generate_dataset`` writes the world as mp4 files with their sound plus a
``metadata.csv`` (file, caption = class name, onset), so it reads like any paired data set.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmdisco.media import write_video_with_audio

CLASS_NAMES = ("red", "green", "blue", "yellow")
PALETTE = np.array([(230, 40, 40), (40, 200, 60), (50, 90, 240), (230, 210, 40)], np.uint8)
TONES_HZ = np.array([330.0, 523.0, 784.0, 1175.0])
NUM_CLASSES = len(CLASS_NAMES)

CLIP_SECONDS = 1.0
FPS = 8
NUM_FRAMES = 8
FRAME_SIZE = 32  # frames are FRAME_SIZE x FRAME_SIZE
SAMPLE_RATE = 16_000
NUM_SAMPLES = 16_000
ONSETS = tuple(range(1, 7))  # onset frame o in {1, ..., 6}

DISK_RADIUS = 5  # pixel (y, x) is inside iff (y - cy)^2 + (x - cx)^2 <= DISK_RADIUS^2
DISK_AREA = 81  # pixels inside a radius-5 disk centred on a pixel
CENTER_RANGE = (6, 25)  # both centre coordinates, inclusive
TONE_AMPLITUDE = 0.5
TONE_DECAY_S = 0.12  # exp(-(t - t0) / TONE_DECAY_S)

METADATA_COLUMNS = ("file", "caption", "onset")


def onset_seconds(onset: int) -> float:
    """t0 = o / 8 s: the time frame o starts, and the tone with it."""
    return onset / FPS


def disk_mask(center: tuple[int, int], size: int = FRAME_SIZE, radius: int = DISK_RADIUS):
    """(size, size) bool: pixels whose centre lies within ``radius`` of ``center`` (row, col)."""
    yy, xx = np.mgrid[:size, :size]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def render_video(k: int, onset: int, center: tuple[int, int]) -> np.ndarray:
    """(NUM_FRAMES, 32, 32, 3) uint8: black before frame ``onset``, then the class-k disk."""
    frames = np.zeros((NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    frames[onset:, disk_mask(center)] = PALETTE[k]
    return frames


def render_audio(k: int, onset: int) -> np.ndarray:
    """(NUM_SAMPLES,) float32: silence before t0, then the decaying class-k tone."""
    t = np.arange(NUM_SAMPLES) / SAMPLE_RATE
    tau = t - onset_seconds(onset)
    tone = TONE_AMPLITUDE * np.sin(2 * np.pi * TONES_HZ[k] * tau) * np.exp(-tau / TONE_DECAY_S)
    return np.where(tau >= 0, tone, 0.0).astype(np.float32)


def _check_clip(k: int, onset: int, center: tuple[int, int]) -> None:
    lo, hi = CENTER_RANGE
    if k not in range(NUM_CLASSES) or onset not in ONSETS:
        raise ValueError(f"class {k} / onset {onset} outside the world")
    if not all(lo <= c <= hi for c in center):
        raise ValueError(f"centre {center} outside [{lo}, {hi}]^2")


def render_clip(k: int, onset: int, center: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A real pair: (frames (8, 32, 32, 3) uint8, audio (16000,) float32) sharing k and onset."""
    _check_clip(k, onset, center)
    return render_video(k, onset, center), render_audio(k, onset)


def sample_clip_params(rng: np.random.Generator) -> tuple[int, int, tuple[int, int]]:
    """(k, onset, centre), each uniform over the world."""
    k = int(rng.integers(NUM_CLASSES))
    onset = int(rng.choice(ONSETS))
    lo, hi = CENTER_RANGE
    cy, cx = (int(c) for c in rng.integers(lo, hi + 1, size=2))
    return k, onset, (cy, cx)


def clip_params(seed: int, index: int) -> tuple[int, int, tuple[int, int]]:
    """Parameters of clip ``index`` of the data set ``seed``: independent of the clip count."""
    return sample_clip_params(np.random.default_rng([seed, index]))


def clip_filename(index: int) -> str:
    return f"{index:06d}.mp4"


def write_clip(path: str | os.PathLike, frames: np.ndarray, audio: np.ndarray) -> Path:
    """Write one clip as mp4 with sound at the world's fps and sample rate."""
    return write_video_with_audio(path, frames, FPS, audio, SAMPLE_RATE)


def _check_seed(out_dir: Path, seed: int) -> None:
    """Refuse to mix clips of two seeds in one folder (world.json records the seed)."""
    info = out_dir / "world.json"
    if info.exists():
        previous = json.loads(info.read_text())["seed"]
        if previous != seed:
            raise ValueError(f"{out_dir} holds a data set of seed {previous}, not {seed}")
    else:
        info.write_text(json.dumps({"seed": seed}) + "\n")


def _write_metadata(path: Path, rows: list[dict]) -> None:
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METADATA_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def generate_dataset(
    out_dir: str | os.PathLike, num_clips: int, seed: int = 0, progress: bool = True
) -> Path:
    """Write ``num_clips`` real pairs as mp4 with sound + metadata.csv; return the CSV path.

    Deterministic: clip i depends only on (seed, i), so a larger ``num_clips`` extends a data set.
    Resumable: every mp4 is written atomically, so one that exists is complete and is skipped;
    metadata.csv (the clips 0 .. num_clips-1) is written last.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_seed(out_dir, seed)
    rows = []
    for i in tqdm(range(num_clips), desc="synthetic clips", disable=not progress):
        k, onset, center = clip_params(seed, i)
        path = out_dir / clip_filename(i)
        if not path.exists():
            write_clip(path, *render_clip(k, onset, center))
        rows.append({"file": path.name, "caption": CLASS_NAMES[k], "onset": onset})
    _write_metadata(out_dir / "metadata.csv", rows)
    return out_dir / "metadata.csv"
