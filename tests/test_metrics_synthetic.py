"""Decoders recover class and onset from mp4s of real pairs and reject corrupted clips."""

import csv
import math

import numpy as np
import pytest

from mmdisco.data import synthetic as W
from mmdisco.media import write_video_with_audio
from mmdisco.metrics.synthetic import decode_audio, decode_video, evaluate_folder, format_table

NUM_CLIPS, SEED = 40, 11


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("real")
    W.generate_dataset(folder, NUM_CLIPS, seed=SEED, progress=False)
    return folder


def test_decoders_recover_every_real_clip_through_mp4(real_folder):
    result = evaluate_folder(real_folder, progress=False)
    rows = list(csv.DictReader(open(real_folder / "metadata.csv")))
    assert result["num_clips"] == NUM_CLIPS and result["unreadable"] == 0
    for key in ("video_valid", "audio_valid", "semantic", "temporal", "semantic_and_temporal"):
        assert result[key] == 1.0, key
    for clip, row in zip(result["clips"], rows):
        label = W.CLASS_NAMES.index(row["caption"])
        assert clip["file"] == row["file"]
        assert clip["video_label"] == clip["audio_label"] == label
        assert clip["video_onset"] == clip["audio_onset"] == int(row["onset"])


def test_shuffled_pairs_agree_only_by_chance(tmp_path):
    n = 24
    params = [W.clip_params(SEED, i) for i in range(n)]
    clips = [W.render_clip(*p) for p in params]
    for i in range(n):  # video of clip i with the sound of clip i + 1: a derangement
        j = (i + 1) % n
        write_video_with_audio(tmp_path / f"{i:03d}.mp4", clips[i][0], 8, clips[j][1], 16_000)
    result = evaluate_folder(tmp_path, progress=False)
    same_k = np.mean([params[i][0] == params[(i + 1) % n][0] for i in range(n)])
    same_o = np.mean([params[i][1] == params[(i + 1) % n][1] for i in range(n)])
    assert result["both_valid"] == 1.0
    assert result["semantic"] == pytest.approx(same_k)
    assert result["temporal"] == pytest.approx(same_o)
    assert result["semantic"] < 0.5 and result["temporal"] < 0.4  # chance: 1/4 and 1/6


@pytest.fixture
def clip():
    return W.render_clip(2, 3, (12, 20))


def _two_blobs(frames):
    frames = frames.copy()
    frames[3:, 2:6, 2:6] = W.PALETTE[2]
    return frames


def _moving(frames):
    return np.stack([np.roll(f, -i, axis=1) for i, f in enumerate(frames)])  # 1 px per frame


def _square(frames):
    frames = frames.copy()
    frames[3:, 7:18, 15:26] = W.PALETTE[2]
    return frames


def _specks_before_onset(frames):
    frames = frames.copy()
    frames[1, :3, :3] = 255
    return frames


# name -> (corruption, the check that must catch it: a fragment of the reason)
VIDEO_CORRUPTIONS = {
    "noise": (lambda f: np.random.default_rng(0).integers(0, 256, f.shape, np.uint8), "onset"),
    "black": (np.zeros_like, "no disk"),
    "two_blobs": (_two_blobs, "outside the disk"),
    "wrong_colour": (lambda f: np.where(f.any(-1, keepdims=True), np.uint8(150), f), "palette"),
    "moving": (_moving, "moves"),
    "square": (_square, "area 121"),
    "disk_at_frame_0": (lambda f: np.repeat(f[3:4], 8, axis=0), "onset frame 0"),
    "disk_vanishes": (lambda f: np.concatenate([f[:7], np.zeros_like(f[:1])]), "frame 7"),
    "specks_before_onset": (_specks_before_onset, "not black"),
    "wrong_size": (lambda f: f[:, :30], "shape"),
}


def test_video_decoder_on_a_real_clip(clip):
    assert decode_video(clip[0]) == decode_video(clip[0].copy())
    decoded = decode_video(clip[0])
    assert (decoded.valid, decoded.label, decoded.onset, decoded.reason) == (True, 2, 3, "ok")


@pytest.mark.parametrize("name", list(VIDEO_CORRUPTIONS))
def test_video_decoder_rejects_corruptions(clip, name):
    corrupt, reason = VIDEO_CORRUPTIONS[name]
    decoded = decode_video(corrupt(clip[0]))
    assert not decoded.valid and reason in decoded.reason


def _tone(freq, start_s, decay_s=0.12, n=16_000):
    tau = np.arange(n) / 16_000 - start_s
    return np.where(tau >= 0, 0.5 * np.sin(2 * np.pi * freq * tau) * np.exp(-tau / decay_s), 0.0)


def _noisy_tone(audio):
    """The real tone plus as much white noise, with the same onset (0.375 s) and decay."""
    tau = np.arange(len(audio)) / 16_000 - 0.375
    noise = 0.5 * np.random.default_rng(2).standard_normal(len(audio))
    return audio + np.where(tau >= 0, noise * np.exp(-np.maximum(tau, 0) / 0.12), 0.0)


AUDIO_CORRUPTIONS = {
    "off_palette_tone": (lambda a: _tone(440.0, 0.375), "off the palette"),
    "white_noise": (lambda a: 0.3 * np.random.default_rng(0).standard_normal(a.shape), "onset"),
    "noisy_tone": (_noisy_tone, "not a clean tone"),
    "silence": (np.zeros_like, "too quiet"),
    "sustained_tone": (lambda a: _tone(784.0, 0.375, decay_s=100.0), "decay time"),
    "fast_decay": (lambda a: _tone(784.0, 0.375, decay_s=0.03), "decay time"),
    "second_onset": (lambda a: a + _tone(784.0, 0.75), "rises again"),
    "noise_before_onset": (
        lambda a: a + 0.05 * np.random.default_rng(1).standard_normal(a.shape), "not silent"
    ),
    "onset_at_0": (lambda a: _tone(784.0, 0.0), "onset frame 0"),
    "chord": (lambda a: a + _tone(330.0, 0.375), "not a clean tone"),
    "short": (lambda a: a[:8000], "shape"),
}


def test_audio_decoder_on_a_real_clip(clip):
    decoded = decode_audio(clip[1])
    assert (decoded.valid, decoded.label, decoded.onset, decoded.reason) == (True, 2, 3, "ok")


@pytest.mark.parametrize("name", list(AUDIO_CORRUPTIONS))
def test_audio_decoder_rejects_corruptions(clip, name):
    corrupt, reason = AUDIO_CORRUPTIONS[name]
    decoded = decode_audio(corrupt(clip[1]))
    assert not decoded.valid and reason in decoded.reason


def test_corrupted_mp4s_are_invalid_and_unreadable_ones_counted(tmp_path, clip):
    frames, audio = clip
    write_video_with_audio(tmp_path / "a.mp4", _two_blobs(frames), 8, audio, 16_000)
    write_video_with_audio(tmp_path / "b.mp4", frames, 8, _tone(440.0, 0.375), 16_000)
    write_video_with_audio(tmp_path / "c.mp4", frames, 8, audio, 16_000)
    (tmp_path / "d.mp4").write_bytes(b"not a video")
    result = evaluate_folder(tmp_path, progress=False)
    assert [c["video_valid"] for c in result["clips"]] == [False, True, True, False]
    assert [c["audio_valid"] for c in result["clips"]] == [True, False, True, False]
    assert result["unreadable"] == 1 and result["clips"][3]["video_reason"].startswith("unread")
    assert result["semantic_and_temporal"] == 0.25 and result["semantic_given_valid"] == 1.0

    table = format_table({"unguided": result, "guided": result})
    lines = table.splitlines()
    assert "unguided" in lines[0] and "guided" in lines[0]
    assert any(line.startswith("semantic_and_temporal") and "25.0%" in line for line in lines)
    assert "av_align" not in table


def test_balance_is_the_normalised_entropy_of_the_decoded_values():
    from mmdisco.metrics.synthetic import normalised_entropy, summarize

    assert normalised_entropy([0, 1, 2, 3], 4) == pytest.approx(1.0)
    assert normalised_entropy([0, 0, 1, 1], 4) == pytest.approx(0.5)  # ln 2 / ln 4
    assert normalised_entropy([3, 3, 3], 4) == 0.0 and math.isnan(normalised_entropy([], 4))
    rows = [  # video: classes 0 0 1 1 (0.5), audio: 0 1 2 3 (1.0); an invalid decoding is left out
        {"unreadable": False, "video_valid": True, "video_label": k, "video_onset": 1,
         "audio_valid": True, "audio_label": a, "audio_onset": o}
        for k, a, o in ((0, 0, 1), (0, 1, 2), (1, 2, 1), (1, 3, 2))
    ] + [{"unreadable": False, "video_valid": False, "video_label": 3, "video_onset": 5,
          "audio_valid": False, "audio_label": 3, "audio_onset": 5}]  # fmt: skip
    for r in rows:
        r.update(both_valid=r["video_valid"], semantic=False, temporal=False,
                 semantic_and_temporal=False)  # fmt: skip
    out = summarize(rows)
    assert out["class_balance"] == pytest.approx((0.5 + 1.0) / 2)
    # onsets: video all 1 (0), audio 1 2 1 2 (ln 2 / ln 6)
    assert out["onset_balance"] == pytest.approx(math.log(2) / math.log(6) / 2)
