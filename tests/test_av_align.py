"""AV-Align (TempoTokens): hand-computed IoU, peak rules, and real vs time-shifted pairs."""

import numpy as np
import pytest

pytest.importorskip("librosa")
cv2 = pytest.importorskip("cv2")

from mmdisco.data import synthetic as W  # noqa: E402
from mmdisco.media import write_video_with_audio  # noqa: E402
from mmdisco.metrics import av_align as A  # noqa: E402
from mmdisco.metrics.synthetic import evaluate_folder  # noqa: E402

SHIFT_FRAMES = 3  # 0.375 s: three times the matching window


@pytest.fixture(scope="module", autouse=True)
def warm_librosa():
    """librosa JIT-compiles on its first onset call (seconds): pay it once for this module."""
    cv2.setNumThreads(1)
    A.detect_audio_peaks(np.zeros(4000, np.float32), 16_000)


@pytest.mark.parametrize(
    "audio, video, fps, expected",
    [
        ([0.1, 0.5, 0.9], [0.12, 0.45, 0.7], 8, 2 / (3 + 3 - 2)),  # 0.9 has no partner
        ([0.5, 0.52], [0.5], 8, 1 / (2 + 1 - 1)),  # one-to-one: a video peak is used once
        ([0.5], [0.5, 0.55], 8, 1 / (1 + 2 - 1)),
        ([0.125], [0.0], 8, 0.0),  # exactly one frame apart: outside the strict window
        ([0.124], [0.0], 8, 1.0),
        ([0.2], [0.3], 25, 0.0),  # the window is one frame at this fps (0.04 s)
        ([], [0.3], 8, 0.0),
        ([], [], 8, 0.0),  # undefined in the reference; 0.0 here
        ([0.1, 0.6], [0.12, 0.61], 8, 1.0),
    ],
)
def test_peak_iou_by_hand(audio, video, fps, expected):
    assert A.peak_iou(audio, video, fps) == pytest.approx(expected)


def test_peak_iou_matching_is_greedy_in_audio_order():
    # Audio 0.05 takes video 0.1 (first unused in range); audio 0.2 then finds no partner,
    # although a maximum matching (0.05-0.0, 0.2-0.1) would have two: the reference's rule.
    assert A.peak_iou([0.05, 0.2], [0.1, 0.0], 8) == pytest.approx(1 / 3)


def test_local_peaks_rules():
    traj = np.array([0.0, 0.0, 0.5, 0.0, 0.05, 0.09, 0.08, 0.0])
    np.testing.assert_allclose(A.local_peaks(traj, 8), [2 / 8])  # 0.09 < 0.1 threshold
    assert len(A.local_peaks([0.0, 1.0, 1.0, 0.0], 8)) == 0  # strict: no plateau peak
    assert len(A.local_peaks([2.0, 1.0, 0.0], 8)) == 0  # ends are never peaks
    np.testing.assert_allclose(A.local_peaks([0.0, 0.1, 0.0], 4), [0.25])  # >= threshold


@pytest.mark.parametrize("onset", [1, 2, 4, 6])
def test_peaks_of_rendered_clips(onset):
    frames, audio = W.render_clip(1, onset, (15, 15))
    traj = A.flow_trajectory(frames)
    assert traj.shape == (8,) and traj[0] == traj[1]  # entry 0 repeats entry 1 (reference)
    assert traj[onset] >= A.FLOW_THRESHOLD and np.delete(traj, [0, onset]).max() < 1e-3
    video = A.detect_video_peaks(frames, 8)
    # a disk appearing at frame 1 is no peak: the repeated entry 0 makes traj[0] == traj[1]
    np.testing.assert_allclose(video, [] if onset == 1 else [onset / 8])
    audio_peaks = A.detect_audio_peaks(audio, 16_000)
    assert len(audio_peaks) == 1 and abs(audio_peaks[0] - onset / 8) < 1 / 8


def _shifted(audio: np.ndarray, frames: int) -> np.ndarray:
    """Delay audio by whole video frames, silence filling in (the onset moves later)."""
    n = frames * W.SAMPLE_RATE // W.FPS
    return np.concatenate([np.zeros(n, audio.dtype), audio[:-n]])


def test_real_pairs_score_higher_than_time_shifted_ones(tmp_path):
    real, shifted = tmp_path / "real", tmp_path / "shifted"
    onsets = []
    for i in range(24):
        k, onset, center = W.clip_params(5, i)
        frames, audio = W.render_clip(k, onset, center)
        onsets.append(onset)
        write_video_with_audio(real / f"{i:03d}.mp4", frames, 8, audio, 16_000)
        write_video_with_audio(shifted / f"{i:03d}.mp4", frames, 8, _shifted(audio, 3), 16_000)
    real_result = evaluate_folder(real, av_align=True, progress=False)
    shifted_result = evaluate_folder(shifted, av_align=True, progress=False)
    per_clip = [c["av_align"] for c in real_result["clips"]]
    # exact: 1 where the disk appears at frame >= 2, 0 at frame 1 (no video peak there)
    assert per_clip == [float(o >= 2) for o in onsets]
    assert shifted_result["av_align"] == 0.0 < real_result["av_align"]
    assert A.av_align_folder(real, progress=False) == pytest.approx(real_result["av_align"])
    assert A.av_align_file(real / "000.mp4") == per_clip[0]


# -- the MMDisCo paper's protocol (appendix A.10.1) -------------------------------------------
@pytest.mark.parametrize(
    "audio, video, expected",
    [
        ([0.5, 0.52], [0.5], 2 / (2 + 1 - 2)),  # both audio peaks match one video peak: 2.0
        ([0.05, 0.2], [0.1, 0.0], 2 / (2 + 2 - 2)),  # the first in-range video peak, reused
        ([0.1, 0.5, 0.9], [0.12, 0.45, 0.7], 2 / (3 + 3 - 2)),  # as one-to-one here
    ],
)
def test_paper_matching_allows_one_to_many(audio, video, expected):
    assert A.peak_iou(audio, video, 8, one_to_one=False) == pytest.approx(expected)


def test_paper_protocol_settings():
    p = A.protocol("mmdisco-a10.1")
    assert p.hop_length / p.sample_rate == pytest.approx(0.096)  # the paper's 96 ms interval
    assert A.protocol("tempotokens-2025").hop_length == 512
    # no flow threshold in the 2024 reference: a weak motion peak counts
    np.testing.assert_allclose(A.local_peaks([0.0, 0.05, 0.0], 8, p.threshold), [1 / 8])
    with pytest.raises(ValueError, match="unknown AV-Align variant"):
        A.protocol("tempotokens")


@pytest.mark.parametrize("onset", [2, 4, 6])
def test_paper_protocol_on_rendered_clips(onset):
    frames, audio = W.render_clip(1, onset, (15, 15))
    peaks = A.detect_audio_peaks(audio, 16_000, 16_000, 1536)
    # onset times are whole multiples of the 96 ms hop, one of them within a frame of the onset
    np.testing.assert_allclose(peaks / 0.096, np.round(peaks / 0.096), atol=1e-9)
    assert abs(peaks[0] - onset / 8) < 1 / 8
    # (the coarse hop may add a spurious onset at the clip's end, 1 s: onset 6 gets 0.96 s)
    expected = 1 / len(peaks)  # one video peak, matched by the first audio peak
    assert A.av_align_score(frames, 8, audio, 16_000, variant="mmdisco-a10.1") == expected


def test_details_count_the_peaks_the_score_is_made_of():
    """av_align_details: the score and the number of audio / video peaks behind it."""
    from mmdisco.metrics.av_align import av_align_details, av_align_score

    fps, sr = 8.0, 16000
    frames = np.zeros((8, 32, 32, 3), np.uint8)
    frames[3:, 8:24, 8:24] = 255  # a square appears in frame 3: one flow peak
    audio = np.zeros(sr, np.float32)
    t = np.arange(sr - 3 * sr // 8) / sr
    audio[3 * sr // 8 :] = 0.5 * np.sin(2 * np.pi * 440 * t) * np.exp(-4 * t)  # onset at 3/8 s
    d = av_align_details(frames, fps, audio, sr)
    assert d["av_align"] == av_align_score(frames, fps, audio, sr)
    assert d["av_audio_peaks"] >= 1 and d["av_video_peaks"] >= 1
