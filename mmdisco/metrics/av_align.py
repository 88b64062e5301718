"""AV-Align (Yariv et al., "Diverse and Aligned Audio-to-Video Generation via Text-to-Video
Model Adaptation" / TempoTokens, AAAI 2024; reference script ``av_align.py`` in
github.com/guyyariv/TempoTokens as of its Feb 2025 update): the IoU of audio and video peaks.

- Audio peaks: librosa onset detection. The audio is mixed to mono and resampled to 22050 Hz
  (what the reference's ``librosa.load`` does, with librosa's default resampler), then
  ``onset_strength`` and ``onset_detect`` with librosa's defaults (hop 512, peak picking on
  the normalised envelope, no backtracking); peak times are the onset frames' times.
- Video peaks: Farneback optical flow between consecutive grey frames with the reference's
  parameters (pyr_scale 0.5, 3 levels, window 15, 3 iterations, poly_n 5, poly_sigma 1.2),
  reduced to the mean flow magnitude per frame pair. The trajectory has one value per frame:
  entry i is the flow from frame i-1 to frame i, and entry 0 repeats entry 1, as in the
  reference. A peak is an interior strict local maximum, traj[i-1] < traj[i] > traj[i+1], with
  traj[i] >= 0.1 (the Feb 2025 threshold against static scenes); its time is i / fps. Note the
  consequence of the repeated entry 0: a change between frames 0 and 1 is never a peak.
- Matching: each audio peak, in time order, takes the first still-unused video peak with
  |t_video - t_audio| < 1 / fps (strict); the score is IoU = matches / (|A| + |V| - matches).
  This greedy one-to-one matching is the reference's, not a maximum matching.
- Edge case the reference leaves undefined (it divides by zero): no peak in either modality
  scores 0.0 (no evidence of alignment).

Two protocols, named in every output (``VARIANTS``):

- ``tempotokens-2025`` (default, above): the reference as of Feb 2025.
- ``mmdisco-a10.1``: the MMDisCo paper's modified protocol (its appendix A.10.1, the numbers of
  its Table 13): the reference as it was in 2024 (commit 34d9502: no flow threshold, and every
  audio peak with a video peak within one frame counts, so several audio peaks may match the
  same video peak (the paper's Eq. 38) and the score can exceed 1), with the onset detection
  interval raised from 32 ms to 96 ms for 8 fps videos: audio at 16 kHz (MMDisCo's rate, where
  librosa's hop of 512 samples is the paper's 32 ms) and an onset hop of 1536 samples (96 ms).
  Doubts: the paper gives the interval, not the code; "interval" is read here as the onset
  envelope's hop length. Its Eq. 37 (lost in our text copy) also counts "valid" peaks, those
  "within three frames" of a peak of the other modality; that equation is not implemented:
  the matching window here is the reference's one frame (Eq. 38).

Differences of input only: the reference reads the frames with OpenCV (BGR -> grey) and the
audio from a separate wav; here both come from the one mp4 through ``mmdisco.media`` (RGB ->
grey, the same luma weights). This module needs the ``eval`` extras (OpenCV, librosa).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import librosa
import numpy as np
from tqdm import tqdm

from mmdisco.media import read_video_with_audio

AUDIO_SAMPLE_RATE = 22050  # librosa.load's default rate, as in the reference
FLOW_THRESHOLD = 0.1  # minimum mean flow magnitude (px / frame) of a video peak
# Farneback: pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags (reference values)
FARNEBACK_PARAMS = (0.5, 3, 15, 3, 5, 1.2, 0)


@dataclass(frozen=True)
class AVAlignProtocol:
    sample_rate: int  # audio rate of onset detection
    hop_length: int  # onset envelope hop (samples): the onset detection interval
    threshold: float  # minimum flow magnitude of a video peak (0: none)
    one_to_one: bool  # a video peak matches at most one audio peak


VARIANTS = {
    "tempotokens-2025": AVAlignProtocol(AUDIO_SAMPLE_RATE, 512, FLOW_THRESHOLD, True),
    "mmdisco-a10.1": AVAlignProtocol(16_000, 1536, 0.0, False),  # paper A.10.1, 96 ms
}
DEFAULT_VARIANT = "tempotokens-2025"


def protocol(variant: str) -> AVAlignProtocol:
    if variant not in VARIANTS:
        raise ValueError(f"unknown AV-Align variant {variant!r}; known: {sorted(VARIANTS)}")
    return VARIANTS[variant]


def detect_audio_peaks(
    audio: np.ndarray, sample_rate: int, target_rate: int = AUDIO_SAMPLE_RATE, hop_length: int = 512
) -> np.ndarray:
    """Onset times (s) of (N,) or (C, N) audio by librosa onset detection at target_rate."""
    y = np.asarray(audio, dtype=np.float32)
    y = y.mean(axis=0) if y.ndim == 2 else y
    if sample_rate != target_rate:
        y = librosa.resample(y, orig_sr=sample_rate, target_sr=target_rate)
    envelope = librosa.onset.onset_strength(y=y, sr=target_rate, hop_length=hop_length)
    frames = librosa.onset.onset_detect(
        onset_envelope=envelope, sr=target_rate, hop_length=hop_length
    )
    return librosa.frames_to_time(frames, sr=target_rate, hop_length=hop_length)


def flow_magnitude(prev: np.ndarray, curr: np.ndarray) -> float:
    """Mean Farneback optical-flow magnitude between two (H, W, 3) uint8 RGB frames."""
    prev_grey = cv2.cvtColor(np.ascontiguousarray(prev), cv2.COLOR_RGB2GRAY)
    curr_grey = cv2.cvtColor(np.ascontiguousarray(curr), cv2.COLOR_RGB2GRAY)
    flow = cv2.calcOpticalFlowFarneback(prev_grey, curr_grey, None, *FARNEBACK_PARAMS)
    return float(np.mean(np.hypot(flow[..., 0], flow[..., 1])))


def flow_trajectory(frames: np.ndarray) -> np.ndarray:
    """(F,) flow magnitudes: entry i is frame i-1 -> i, entry 0 repeats entry 1 (reference)."""
    if len(frames) < 2:
        return np.zeros(len(frames))
    steps = [flow_magnitude(frames[i - 1], frames[i]) for i in range(1, len(frames))]
    return np.array([steps[0], *steps])


def local_peaks(trajectory: np.ndarray, fps: float, threshold: float = FLOW_THRESHOLD):
    """Times i / fps of interior strict local maxima with trajectory[i] >= threshold."""
    x = np.asarray(trajectory, dtype=np.float64)
    i = np.arange(1, len(x) - 1)
    keep = (x[i - 1] < x[i]) & (x[i] > x[i + 1]) & (x[i] >= threshold)
    return i[keep] / fps


def detect_video_peaks(
    frames: np.ndarray, fps: float, threshold: float = FLOW_THRESHOLD
) -> np.ndarray:
    """Peak times (s) of the optical-flow trajectory of (F, H, W, 3) uint8 RGB frames."""
    return local_peaks(flow_trajectory(frames), fps, threshold)


def peak_iou(audio_peaks, video_peaks, fps: float, one_to_one: bool = True) -> float:
    """Greedy matching within one frame (strict), then matches / union.

    one_to_one=False is the 2024 reference (the MMDisCo paper's Eq. 38): a video peak may
    match several audio peaks, so the score can exceed 1."""
    used = [False] * len(video_peaks)
    matches = 0
    for a in audio_peaks:
        for j, v in enumerate(video_peaks):
            if not (one_to_one and used[j]) and v - 1.0 / fps < a < v + 1.0 / fps:
                used[j] = True
                matches += 1
                break
    union = len(audio_peaks) + len(video_peaks) - matches
    return matches / union if union else 0.0


def av_align_score(
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray,
    sample_rate: int,
    variant: str = DEFAULT_VARIANT,
) -> float:
    """AV-Align of one clip: frames (F, H, W, 3) uint8 RGB at fps, audio (N,) or (C, N)."""
    return av_align_details(frames, fps, audio, sample_rate, variant)["av_align"]


def av_align_details(frames, fps, audio, sample_rate, variant: str = DEFAULT_VARIANT) -> dict:
    """AV-Align of one clip with what it is made of: the number of audio and video peaks."""
    p = protocol(variant)
    audio_peaks = detect_audio_peaks(audio, sample_rate, p.sample_rate, p.hop_length)
    video_peaks = detect_video_peaks(frames, fps, p.threshold)
    return {
        "av_align": peak_iou(audio_peaks, video_peaks, fps, p.one_to_one),
        "av_audio_peaks": len(audio_peaks),
        "av_video_peaks": len(video_peaks),
    }


def av_align_file(path: str | os.PathLike, variant: str = DEFAULT_VARIANT) -> float:
    """AV-Align of one mp4 with sound (native fps and sample rate)."""
    frames, fps, audio, sr = read_video_with_audio(path, mono=True)
    return av_align_score(frames, fps, audio, sr, variant)


def av_align_folder(
    folder: str | os.PathLike, progress: bool = True, variant: str = DEFAULT_VARIANT
) -> float:
    """Mean AV-Align over the *.mp4 files of a folder (the reference's summary)."""
    paths = sorted(Path(folder).glob("*.mp4"))
    if not paths:
        raise FileNotFoundError(f"no *.mp4 in {folder}")
    bar = tqdm(paths, desc=f"AV-Align ({variant}) {Path(folder).name}", disable=not progress)
    return float(np.mean([av_align_file(p, variant) for p in bar]))
