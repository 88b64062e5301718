"""Decode class and onset from the synthetic world's mp4 files alone (issue 5), and score pairs.

Each modality is decoded on its own into ``Decoded(valid, label, onset, reason)``; a pair is
semantically aligned when both are valid and the classes agree, temporally aligned when both
are valid and the onset frames agree. The thresholds are module constants so they can be
quoted; the world's constants come from ``mmdisco.data.synthetic``.

Video is valid (``decode_video``) iff all of:
  1. the clip is (8, 32, 32, 3);
  2. a pixel is foreground iff its brightest channel exceeds ``FG_THRESHOLD``; the onset is the
     first frame whose largest 8-connected foreground blob has >= ``AREA_RANGE[0]`` pixels, and
     it lies in {1, ..., 6};
  3. every frame before the onset has <= ``MAX_STRAY`` foreground pixels (black);
  4. every frame from the onset on is one clean disk: its largest blob has an area in
     ``AREA_RANGE`` (a radius-5 disk has 81 px) and a bounding box with both sides in
     ``BOX_RANGE`` (11 px for the disk), and <= ``MAX_STRAY`` foreground pixels lie outside it;
  5. the disk stands still: every blob centroid is within ``MAX_DRIFT_PX`` of their mean;
  6. in every frame from the onset on, the mean colour of the disk interior (blob pixels within
     ``INTERIOR_RADIUS`` of the centroid) is within ``COLOR_TOL`` (RGB Euclidean) of one palette
     entry, the same one in all frames; that entry is the class.

Audio is valid (``decode_audio``) iff all of:
  1. the clip is 1.0 s (+-1%) of mono audio at 16 kHz;
  2. the RMS envelope (``ENV_WIN`` samples, hop ``ENV_HOP``) peaks at >= ``MIN_PEAK_RMS``;
     the onset time t0 is the centre of the first window whose RMS reaches ``ONSET_FRACTION``
     of that peak, and the onset frame round(t0 * 8) lies in {1, ..., 6};
  3. silence before: the RMS of [0, t0 - ``GUARD_S``) is <= ``SILENCE_RATIO`` x the peak RMS;
  4. one palette pitch: the strongest frequency of the Hann-windowed spectrum of
     [t0, t0 + ``PITCH_SPAN_S``) is within ``PITCH_TOL_CENTS`` of a palette tone (the class),
     and >= ``MIN_TONAL_FRACTION`` of that spectrum's energy lies within ``TONAL_BAND_HZ`` of it;
  5. a decay roughly like the world's: a least-squares line through the log RMS envelope over
     tau = t - t0 in [``GUARD_S``, ``DECAY_SPAN_S``] gives a time constant within
     ``DECAY_RANGE_S`` (the world uses 0.12 s), and no window after t0 + ``GUARD_S`` exceeds
     ``MAX_EXCESS`` x the fitted decay (a single event), windows below ``FLOOR_RATIO`` x the
     peak excepted.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from mmdisco.data.synthetic import (
    DISK_AREA,
    FPS,
    FRAME_SIZE,
    NUM_FRAMES,
    NUM_SAMPLES,
    ONSETS,
    PALETTE,
    SAMPLE_RATE,
    TONES_HZ,
)
from mmdisco.media import MediaError, read_video_with_audio

# video thresholds
FG_THRESHOLD = 100  # palette colours have a channel >= 200, the background is 0
MAX_STRAY = 3  # foreground pixels tolerated outside the disk / in a black frame
AREA_RANGE = (round(0.6 * DISK_AREA), round(1.4 * DISK_AREA))  # (49, 113) px; disk = 81
BOX_RANGE = (9, 13)  # bounding-box sides; disk = 11
MAX_DRIFT_PX = 1.0
INTERIOR_RADIUS = 3.0
COLOR_TOL = 60.0  # half the closest palette pair (red-yellow) is 85

# audio thresholds
ENV_WIN, ENV_HOP = 160, 40  # 10 ms windows, 2.5 ms hop at 16 kHz
MIN_PEAK_RMS = 0.05  # the world's tone starts at RMS 0.35
ONSET_FRACTION = 0.25
GUARD_S = 0.02
SILENCE_RATIO = 0.1
PITCH_SPAN_S = 0.25
PITCH_TOL_CENTS = 100.0  # one semitone; neighbouring palette tones are >= 700 cents apart
TONAL_BAND_HZ = 25.0
MIN_TONAL_FRACTION = 0.5
DECAY_SPAN_S = 0.3
MIN_DECAY_FIT_S = 0.1  # shortest fit span (onset 6 leaves 0.25 s)
DECAY_RANGE_S = (0.06, 0.24)  # a factor of 2 around 0.12 s
MAX_EXCESS = 2.0
FLOOR_RATIO = 0.02


@dataclass(frozen=True)
class Decoded:
    """What one modality says: valid or not, and the class / onset frame when measured."""

    valid: bool
    label: int | None = None
    onset: int | None = None
    reason: str = "ok"


def _invalid(reason: str, label: int | None = None, onset: int | None = None) -> Decoded:
    return Decoded(False, label, onset, reason)


# --------------------------------------------------------------------------- video


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a (H, W) bool mask (all False if none)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(np.argmax(sizes))


def _disk_problem(fg: np.ndarray, blob: np.ndarray) -> str | None:
    """Check 4 on one frame: None if ``blob`` is a clean radius-5-like disk."""
    area = int(blob.sum())
    if not AREA_RANGE[0] <= area <= AREA_RANGE[1]:
        return f"disk area {area} outside {AREA_RANGE}"
    rows, cols = np.nonzero(blob)
    box = (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    if not all(BOX_RANGE[0] <= s <= BOX_RANGE[1] for s in box):
        return f"disk box {box} outside {BOX_RANGE}"
    if int(fg.sum()) - area > MAX_STRAY:
        return f"{int(fg.sum()) - area} foreground pixels outside the disk"
    return None


def nearest_color(rgb: np.ndarray) -> tuple[int, float]:
    """(palette index, Euclidean RGB distance) of the palette entry closest to ``rgb``."""
    dist = np.linalg.norm(PALETTE.astype(np.float64) - np.asarray(rgb, np.float64), axis=1)
    return int(np.argmin(dist)), float(dist.min())


def _interior_color(frame: np.ndarray, blob: np.ndarray) -> np.ndarray:
    """Mean RGB of blob pixels within INTERIOR_RADIUS of the blob centroid."""
    rows, cols = np.nonzero(blob)
    near = np.hypot(rows - rows.mean(), cols - cols.mean()) <= INTERIOR_RADIUS
    return frame[rows[near], cols[near]].astype(np.float64).mean(axis=0)


def _video_onset(fg: np.ndarray) -> tuple[int | None, list[np.ndarray]]:
    """First frame holding a blob of >= AREA_RANGE[0] px, and every frame's largest blob."""
    blobs = [_largest_blob(m) for m in fg]
    hits = [i for i, b in enumerate(blobs) if b.sum() >= AREA_RANGE[0]]
    return (hits[0] if hits else None), blobs


def _disk_label(frames: np.ndarray, blobs: list[np.ndarray], onset: int) -> Decoded:
    """Checks 5-6 over the frames from the onset on."""
    cents = np.array([np.argwhere(b).mean(axis=0) for b in blobs[onset:]])
    if np.abs(cents - cents.mean(axis=0)).max() > MAX_DRIFT_PX:
        return _invalid("disk moves", onset=onset)
    colors = [nearest_color(_interior_color(f, b)) for f, b in zip(frames[onset:], blobs[onset:])]
    labels = {k for k, _ in colors}
    worst = max(d for _, d in colors)
    if len(labels) > 1:
        return _invalid(f"disk colour changes {sorted(labels)}", onset=onset)
    if worst > COLOR_TOL:
        return _invalid(f"colour {worst:.0f} from the palette", labels.pop(), onset)
    return Decoded(True, labels.pop(), onset)


def decode_video(frames: np.ndarray) -> Decoded:
    """(F, H, W, 3) uint8 RGB -> Decoded; "valid" is defined in the module docstring."""
    frames = np.asarray(frames)
    if frames.shape != (NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 3):
        return _invalid(f"shape {frames.shape}")
    fg = frames.max(axis=-1) > FG_THRESHOLD  # (F, H, W)
    onset, blobs = _video_onset(fg)
    if onset is None:
        return _invalid("no disk")
    if onset not in ONSETS:
        return _invalid(f"onset frame {onset} outside {ONSETS[0]}..{ONSETS[-1]}", onset=onset)
    if fg[:onset].sum(axis=(1, 2)).max() > MAX_STRAY:
        return _invalid("not black before the onset", onset=onset)
    for i in range(onset, NUM_FRAMES):
        problem = _disk_problem(fg[i], blobs[i])
        if problem:
            return _invalid(f"frame {i}: {problem}", onset=onset)
    return _disk_label(frames, blobs, onset)


# --------------------------------------------------------------------------- audio


def rms_envelope(audio: np.ndarray, win: int = ENV_WIN, hop: int = ENV_HOP) -> np.ndarray:
    """RMS of windows audio[i*hop : i*hop + win] for every full window."""
    n = 1 + (len(audio) - win) // hop
    idx = np.arange(win)[None] + hop * np.arange(n)[:, None]
    return np.sqrt(np.mean(audio[idx].astype(np.float64) ** 2, axis=1))


def dominant_frequency(segment: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """(strongest frequency in Hz, fraction of spectral energy within TONAL_BAND_HZ of it)."""
    nfft = 1 << 15
    power = np.abs(np.fft.rfft(segment * np.hanning(len(segment)), n=nfft)) ** 2
    freqs = np.fft.rfftfreq(nfft, 1.0 / sample_rate)
    peak = float(freqs[np.argmax(power)])
    band = np.abs(freqs - peak) <= TONAL_BAND_HZ
    return peak, float(power[band].sum() / max(power.sum(), 1e-30))


def nearest_tone(freq: float) -> tuple[int, float]:
    """(palette index, distance in cents) of the palette tone closest to ``freq`` in pitch."""
    cents = 1200.0 * np.abs(np.log2(max(freq, 1e-6) / TONES_HZ))
    return int(np.argmin(cents)), float(cents.min())


def _audio_onset(env: np.ndarray, sample_rate: int) -> float:
    """t0: the centre of the first window whose RMS reaches ONSET_FRACTION of the peak."""
    first = int(np.argmax(env >= ONSET_FRACTION * env.max()))
    return (first * ENV_HOP + ENV_WIN / 2) / sample_rate


def _decay_problem(env: np.ndarray, t0: float, sample_rate: int) -> str | None:
    """Check 5: a log-linear decay with a plausible time constant and no second event."""
    t = (np.arange(len(env)) * ENV_HOP + ENV_WIN / 2) / sample_rate - t0  # tau per window
    end = min(DECAY_SPAN_S, t[-1])
    if end - GUARD_S < MIN_DECAY_FIT_S:
        return "too little audio after the onset"
    fit = (t >= GUARD_S) & (t <= end)
    slope, intercept = np.polyfit(t[fit], np.log(np.maximum(env[fit], 1e-12)), 1)
    tau = -1.0 / slope if slope < 0 else math.inf
    if not DECAY_RANGE_S[0] <= tau <= DECAY_RANGE_S[1]:
        return f"decay time {tau:.3f} s outside {DECAY_RANGE_S}"
    after = t >= GUARD_S
    bound = np.maximum(MAX_EXCESS * np.exp(intercept + slope * t), FLOOR_RATIO * env.max())
    if np.any(env[after] > bound[after]):
        return "sound rises again after the onset"
    return None


def decode_audio(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Decoded:
    """(N,) mono float audio -> Decoded; "valid" is defined in the module docstring."""
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim != 1 or sample_rate != SAMPLE_RATE or abs(len(audio) - NUM_SAMPLES) > 160:
        return _invalid(f"audio shape {audio.shape} at {sample_rate} Hz")
    env = rms_envelope(audio)
    if env.max() < MIN_PEAK_RMS:
        return _invalid(f"too quiet (peak RMS {env.max():.3f})")
    t0 = _audio_onset(env, sample_rate)
    onset = round(t0 * FPS)
    if onset not in ONSETS:
        return _invalid(f"onset frame {onset} outside {ONSETS[0]}..{ONSETS[-1]}", onset=onset)
    before = audio[: max(0, int((t0 - GUARD_S) * sample_rate))]
    if len(before) and np.sqrt(np.mean(before**2)) > SILENCE_RATIO * env.max():
        return _invalid("not silent before the onset", onset=onset)
    i0 = int(t0 * sample_rate)
    freq, tonal = dominant_frequency(audio[i0 : i0 + int(PITCH_SPAN_S * sample_rate)], sample_rate)
    label, cents = nearest_tone(freq)
    if cents > PITCH_TOL_CENTS:
        return _invalid(f"pitch {freq:.0f} Hz off the palette by {cents:.0f} cents", onset=onset)
    if tonal < MIN_TONAL_FRACTION:
        return _invalid(f"not a clean tone ({tonal:.2f} of the energy at the peak)", label, onset)
    problem = _decay_problem(env, t0, sample_rate)
    return _invalid(problem, label, onset) if problem else Decoded(True, label, onset)


# --------------------------------------------------------------------------- folders


def _clip_row(path: Path, with_av_align: bool) -> dict:
    """Per-clip record of an mp4 file: both decodings, agreement flags, optional AV-Align."""
    try:
        frames, fps, audio, sr = read_video_with_audio(path, sample_rate=SAMPLE_RATE, mono=True)
    except MediaError as e:
        bad = _invalid(f"unreadable: {e.reason}")
        return {"file": path.name, "unreadable": True, **_agreement(bad, bad)}
    return {"file": path.name, **clip_row(frames, fps, audio, sr, with_av_align)}


def clip_row(frames: np.ndarray, fps: float, audio: np.ndarray, sr: int, with_av_align=False):
    """Per-clip record of decoded media (frames (F, H, W, 3) uint8, mono audio): both
    decodings, agreement flags, optional AV-Align (with its audio / video peak counts)."""
    row = {"unreadable": False}
    if with_av_align:
        from mmdisco.metrics.av_align import av_align_details  # needs the eval extras

        row.update(av_align_details(frames, fps, audio, sr))
    return {**row, **_agreement(decode_video(frames), decode_audio(audio, sr))}


def _agreement(video: Decoded, audio: Decoded) -> dict:
    row = {f"video_{k}": v for k, v in asdict(video).items()}
    row.update({f"audio_{k}": v for k, v in asdict(audio).items()})
    row["both_valid"] = video.valid and audio.valid
    row["semantic"] = row["both_valid"] and video.label == audio.label
    row["temporal"] = row["both_valid"] and video.onset == audio.onset
    row["semantic_and_temporal"] = row["semantic"] and row["temporal"]
    return row


SUMMARY_KEYS = (
    "num_clips",
    "unreadable",
    "video_valid",
    "audio_valid",
    "both_valid",
    "semantic",
    "temporal",
    "semantic_and_temporal",
    "semantic_given_valid",
    "temporal_given_valid",
    "class_balance",
    "onset_balance",
    "av_align",
    "av_audio_peaks",
    "av_video_peaks",
)


def _mean(rows: list[dict], key: str, where: str | None = None) -> float:
    vals = [float(r[key]) for r in rows if key in r and (where is None or r[where])]
    return float(np.mean(vals)) if vals else float("nan")


def normalised_entropy(values: list, k: int) -> float:
    """H(values) / log k: 1 for values spread evenly over k kinds, 0 for one kind only (NaN for
    none)."""
    if not values:
        return float("nan")
    _, counts = np.unique(np.asarray(values), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum() / math.log(k))


BALANCE_KINDS = {"label": len(PALETTE), "onset": len(ONSETS)}


def decoded_balance(rows: list[dict], modality: str, field: str) -> float:
    """How evenly one modality's valid decodings spread over the world's classes (``field`` =
    "label") or onsets ("onset"): their normalised entropy. The world is uniform in both, so a
    joint that keeps its marginals scores near 1 and one that collapses onto fewer kinds lower
    (two kinds: <= 0.5)."""
    values = [r[f"{modality}_{field}"] for r in rows if r.get(f"{modality}_valid")]
    return normalised_entropy(values, BALANCE_KINDS[field])


def _balance(rows: list[dict], field: str) -> float:
    """``decoded_balance`` averaged over the modalities that have a valid decoding."""
    per_m = [decoded_balance(rows, m, field) for m in ("video", "audio")]
    per_m = [x for x in per_m if not math.isnan(x)]
    return float(np.mean(per_m)) if per_m else float("nan")


def summarize(rows: list[dict]) -> dict:
    """Fractions over all clips (an unreadable or invalid clip counts as not aligned)."""
    out = {"num_clips": len(rows), "unreadable": int(sum(r["unreadable"] for r in rows))}
    for key in SUMMARY_KEYS[2:8]:  # video_valid .. semantic_and_temporal
        out[key] = _mean(rows, key)
    out["semantic_given_valid"] = _mean(rows, "semantic", where="both_valid")
    out["temporal_given_valid"] = _mean(rows, "temporal", where="both_valid")
    out["class_balance"] = _balance(rows, "label")
    out["onset_balance"] = _balance(rows, "onset")
    if any("av_align" in r for r in rows):
        for key in ("av_align", "av_audio_peaks", "av_video_peaks"):
            out[key] = _mean(rows, key)
    return out


def evaluate_folder(
    folder: str | os.PathLike, av_align: bool = False, progress: bool = True
) -> dict:
    """Decode every *.mp4 in ``folder``; return the SUMMARY_KEYS fractions plus ``clips``.

    ``semantic``: both valid and same class; ``temporal``: both valid and same onset frame;
    ``semantic_and_temporal``: both. These are over all clips; the ``*_given_valid`` variants
    are over the clips where both modalities are valid. ``av_align`` (optional, needs librosa
    and OpenCV) is the mean AV-Align score over the readable clips.
    """
    paths = sorted(Path(folder).glob("*.mp4"))
    if not paths:
        raise FileNotFoundError(f"no *.mp4 in {folder}")
    bar = tqdm(paths, desc=f"decode {Path(folder).name}", disable=not progress)
    rows = [_clip_row(p, av_align) for p in bar]
    return {**summarize(rows), "folder": str(folder), "clips": rows}


def format_table(results: dict[str, dict]) -> str:
    """A plain-text table: one row per metric, one column per named result (e.g. guided)."""
    names = list(results)
    keys = [k for k in SUMMARY_KEYS if any(k in r for r in results.values())]
    width = max(len(k) for k in keys) + 2
    lines = [" " * width + "".join(f"{n:>12}" for n in names)]
    for key in keys:
        cells = [_cell(results[n].get(key), key) for n in names]
        lines.append(f"{key:<{width}}" + "".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


def _cell(value, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key in ("num_clips", "unreadable"):
        return str(int(value))
    if key == "av_align":
        return f"{value:.3f}"
    if key in ("av_audio_peaks", "av_video_peaks"):  # mean peaks per clip
        return f"{value:.2f}"
    return f"{100 * value:.1f}%"
