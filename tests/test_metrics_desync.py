"""Synchformer / DeSync (MMAudio's av-benchmark): the checkpoint's keys, golden numbers of the
reference code (video transform, log-mel, a tiny seeded network end to end), and the protocol's
preprocessing by hand (25 fps like ffmpeg's fps filter, resize / crop sizes, segments, windows,
mel bands, the refusal of clips shorter than 4.8 s)."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from seeded_weights import FIXTURES, load_manifest, seeded_audio, seeded_state_dict, seeded_uint8

from mmdisco.metrics import synchformer as S
from mmdisco.metrics.weights import load_into

GOLDEN = json.loads((FIXTURES / "synchformer_golden.json").read_text())
TINY = S.SynchformerConfig(
    dim=32, video_depth=2, video_heads=2, patch_size=56, audio_depth=2, audio_heads=2,
    audio_mlp=64, sync_depth=2, sync_heads=2,
)  # fmt: skip


def tiny_model(seed: int = 0) -> S.Synchformer:
    net = S.Synchformer(TINY).eval()
    load_into(net, seeded_state_dict(GOLDEN["tiny_keys"], seed=seed), "seeded tiny synchformer")
    return net


def test_parameter_names_and_shapes_match_the_checkpoint_manifest():
    with torch.device("meta"):
        ours = {k: list(v.shape) for k, v in S.Synchformer().state_dict().items()}
    assert ours == load_manifest("synchformer_keys.json")
    assert {k: list(v.shape) for k, v in S.Synchformer(TINY).state_dict().items()} == (
        GOLDEN["tiny_keys"]
    )


@pytest.mark.parametrize("case", sorted(GOLDEN["video_transform"]))
def test_video_transform_matches_torchvision_bit_for_bit(case):
    g = GOLDEN["video_transform"][case]
    frames = seeded_uint8(g["shape"], g["seed"])
    u8 = S.resize_crop_uint8(frames)
    assert list(u8.shape) == g["out_shape"] and u8.dtype == torch.uint8
    assert hashlib.sha256(u8.contiguous().numpy().tobytes()).hexdigest() == g["uint8_sha256"]
    x = S.video_input(frames)
    assert x.double().sum().item() == pytest.approx(g["sum"], rel=1e-6)
    assert x.min() >= -1 and x.max() <= 1


def test_tiny_network_end_to_end_matches_the_reference():
    g, clip = GOLDEN, GOLDEN["clip"]
    frames = seeded_uint8(clip["frames"], clip["frames_seed"])
    audio = seeded_audio(clip["samples"], clip["audio_seed"])
    video, mel = S.prepare_clip(frames, 25.0, audio, 16_000, seconds=clip["seconds"])
    assert list(mel[:, 0].shape) == g["mel_shape"] and len(video) == len(mel) == 16
    assert S.video_input(frames).double().sum().item() == pytest.approx(g["video_sum"], rel=1e-6)
    assert torch.equal(video[1, 0], S.video_input(frames[8:9])[0])  # segment 1 starts at frame 8
    assert mel.double().sum().item() == pytest.approx(g["mel_sum"], rel=1e-5)
    np.testing.assert_allclose(mel[0, 0, ::8, ::5], g["mel_first"], atol=2e-5)
    np.testing.assert_allclose(mel[-1, 0, ::8, ::5], g["mel_last"], atol=2e-5)
    net = tiny_model()
    with torch.no_grad():
        v, a = net.video_features(video), net.audio_features(mel)
        logits = net.window_logits(video, mel, chunk=5)
    assert list(v.shape) == g["vfeats_shape"] and list(a.shape) == g["afeats_shape"]
    np.testing.assert_allclose(v[[0, -1]], g["vfeats"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(a[[0, -1]], g["afeats"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, g["logits"], rtol=1e-4, atol=1e-4)
    assert np.abs(S.offsets_of(logits)).tolist() == pytest.approx(g["offsets"])  # |offset|
    assert S.desync_of_logits(logits) == g["desync"]


def test_offset_classes_and_windows():
    assert len(S.OFFSETS) == 21 and S.OFFSETS[0] == -2 and S.OFFSETS[-1] == 2
    assert S.OFFSETS[10] == 0 and float(S.OFFSETS[11]) == pytest.approx(0.2)
    logits = torch.full((2, 21), -1.0)
    logits[0, 0], logits[1, 12] = 1.0, 1.0  # -2.0 s and +0.4 s
    assert S.desync_of_logits(logits) == pytest.approx((2.0 + 0.4) / 2)
    # 8 s: 24 segments, windows over 0-4.8 s and 3.2-8.0 s; 4.8 s: one window, counted twice
    assert S.window_starts(24) == [0, 10] and S.window_starts(14) == [0, 0]
    assert (S.WINDOW_FRAMES, S.WINDOW_SAMPLES, S.WINDOW_SECONDS) == (120, 76_800, 4.8)
    with pytest.raises(ValueError, match="14 segments"):
        S.window_starts(13)


@pytest.mark.parametrize("seconds, segments", [(4.8, 14), (5.0, 14), (5.12, 15), (8.0, 24)])
def test_segments_by_hand(seconds, segments):
    # 16 frames every 8 at 25 fps and 10240 samples every 5120 at 16 kHz: both 0.64 s / 0.32 s
    frames, samples = int(25 * seconds + 1e-9), int(16_000 * seconds + 1e-9)
    assert (frames - 16) // 8 + 1 == segments == (samples - 10_240) // 5_120 + 1
    v = S.video_segments(torch.arange(frames))
    a = S.audio_segments(np.arange(samples, dtype=np.float32))
    assert v.shape == (segments, 16) and a.shape == (segments, 10_240)
    assert v[1, 0] == 8 and v[-1, -1] == (segments - 1) * 8 + 15
    assert a[1, 0] == 5_120 and a[-1, 0] == (segments - 1) * 5_120


def test_frame_rate_conversion_by_hand():
    # 8 fps -> 25 fps: frame i is stamped round(3.125 i) (halves up): 0, 3, 6, 9, 13, 16, ...;
    # output k shows the last frame stamped <= k
    idx = S.resample_frame_indices(64, 8.0)
    assert len(idx) == 200
    assert idx[:17].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 5]
    assert idx[-1] == 63
    assert S.resample_frame_indices(50, 25.0).tolist() == list(range(50))
    # 50 fps -> 25 fps: frame 2k + 1 is stamped k + 1 (1/2 rounds up), so output k is frame 2k
    assert S.resample_frame_indices(10, 50.0).tolist() == [0, 2, 4, 6, 8]
    assert len(S.resample_frame_indices(300, 30000 / 1001)) == 250  # 10.01 s


def test_frame_rate_conversion_matches_ffmpeg(tmp_path):
    """Against ffmpeg's own fps filter (PyAV's filter graph) on an 8 fps mp4 whose frames are
    numbered by their grey level."""
    import av

    from mmdisco.media import write_video_with_audio

    n = 40
    frames = np.repeat((np.arange(n) * 6 + 5).astype(np.uint8)[:, None, None, None], 32, 1)
    frames = np.repeat(np.repeat(frames, 32, 2), 3, 3)
    path = tmp_path / "grey.mp4"
    write_video_with_audio(path, frames, 8, np.zeros(16_000 * 5, np.float32), 16_000)
    seen = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        graph = av.filter.Graph()
        src = graph.add_buffer(template=stream)
        fps = graph.add("fps", "25")
        sink = graph.add("buffersink")
        src.link_to(fps)
        fps.link_to(sink)
        graph.configure()

        def drain():
            while True:
                try:
                    frame = sink.pull()
                except (av.error.BlockingIOError, av.error.EOFError):
                    return
                seen.append(frame.to_ndarray(format="gray").mean())

        for frame in container.decode(stream):
            src.push(frame)
            drain()
        src.push(None)
        drain()
    ffmpeg = np.rint((np.asarray(seen) - 5) / 6).astype(int)
    assert np.abs(np.asarray(seen) - (ffmpeg * 6 + 5)).max() < 2.5  # grey levels survive x264
    assert ffmpeg.tolist() == S.resample_frame_indices(n, 8.0).tolist()


@pytest.mark.parametrize(
    "h, w, resized, crop",
    [
        (224, 224, (224, 224), (0, 0)),
        (256, 341, (224, 298), (0, 37)),  # 224 * 341 / 256 = 298.4 -> 298; (298 - 224) / 2 = 37
        (50, 90, (224, 403), (0, 90)),  # (403 - 224) / 2 = 89.5 -> 90 (Python rounds to even)
        (301, 250, (269, 224), (22, 0)),  # (269 - 224) / 2 = 22.5 -> 22 (Python rounds to even)
        (360, 640, (224, 398), (0, 87)),  # 398.2 -> 398; 87
    ],
)
def test_resize_and_crop_by_hand(h, w, resized, crop):
    assert S.resized_size(h, w) == resized
    assert S.centre_crop_offsets(*resized) == crop
    assert S.resize_crop_uint8(np.zeros((1, h, w, 3), np.uint8)).shape == (1, 3, 224, 224)
    flat = np.full((2, h, w, 3), 255, np.uint8)  # a flat frame stays flat: 1.0 after [-1, 1]
    assert torch.equal(S.video_input(flat), torch.ones(2, 3, 224, 224))


def test_mel_bands_and_log_mel_by_hand():
    fb = S.mel_filters()
    assert fb.shape == (513, 128) and fb.dtype == torch.float32
    # triangles on the HTK mel scale 2595 log10(1 + f / 700), edges evenly spaced 0 - 8 kHz
    edges = 700 * (10 ** (np.linspace(0, 2595 * np.log10(1 + 8000 / 700), 130) / 2595) - 1)
    f = np.linspace(0, 8000, 513)[:, None]
    rise = (f - edges[None, :-2]) / (edges[1:-1] - edges[:-2])
    fall = (edges[None, 2:] - f) / (edges[2:] - edges[1:-1])
    np.testing.assert_allclose(fb.numpy(), np.maximum(0, np.minimum(rise, fall)), atol=5e-5)
    assert fb[0].sum() == 0 and (fb.sum(0) > 0).all()  # no DC weight; every band has bins
    # silence: log(1e-6) in the 65 computed frames, the padded 66th frame is 0 before scaling
    mel = S.log_mel(torch.zeros(10_240))
    assert mel.shape == (128, 66)
    np.testing.assert_allclose(mel[:, :65], (math.log(1e-6) - S.MEL_MEAN) / (2 * S.MEL_STD),
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(mel[:, 65], -S.MEL_MEAN / (2 * S.MEL_STD), rtol=1e-6)
    # a 1 kHz tone peaks in the band whose centre is nearest to 1 kHz on the HTK mel scale
    tone = torch.sin(2 * math.pi * 1000 * torch.arange(10_240) / 16_000)
    centres = np.linspace(0, 2595 * np.log10(1 + 8000 / 700), 130)[1:-1]
    expected_band = int(np.argmin(np.abs(centres - 2595 * np.log10(1 + 1000 / 700))))
    assert int(S.log_mel(tone)[:, 5:60].mean(1).argmax()) == expected_band


def test_clips_shorter_than_one_window_are_refused():
    frames = np.zeros((119, 16, 16, 3), np.uint8)  # 4.76 s at 25 fps
    with pytest.raises(ValueError, match=r"at least 4\.8 s") as err:
        S.prepare_clip(frames, 25.0, np.zeros(16_000 * 6, np.float32), 16_000, name="x.mp4")
    assert "119 frames" in str(err.value) and "x.mp4" in str(err.value)
    assert "never padded" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="76799 samples"):  # the audio is short
        S.prepare_clip(np.zeros((150, 16, 16, 3), np.uint8), 25.0,
                       np.zeros(76_799, np.float32), 16_000)  # fmt: skip
    with pytest.raises(ValueError, match=r"\(2\.00 s\)"):  # our 2 s samples at 8 fps
        S.prepare_clip(np.zeros((16, 16, 16, 3), np.uint8), 8.0,
                       np.zeros(32_000, np.float32), 16_000)  # fmt: skip
    # exactly 4.8 s is one window; 8 fps clips are read at 25 fps; seconds caps the length
    v, a = S.prepare_clip(np.zeros((39, 16, 16, 3), np.uint8), 8.0,
                          np.zeros(78_000, np.float32), 16_000)  # fmt: skip
    assert v.shape == (14, 16, 3, 224, 224) and a.shape == (14, 1, 128, 66)
    v, a = S.prepare_clip(np.zeros((250, 8, 8, 3), np.uint8), 25.0,
                          np.zeros(160_000, np.float32), 16_000)  # fmt: skip
    assert len(v) == len(a) == 24  # the first 8 s of a 10 s clip (av-benchmark's default)
    # audio at 32 kHz is resampled first: 5 s -> 80000 samples -> 14 segments (unresampled,
    # 160000 samples would give 24, as the 8 s of video do)
    v, a = S.prepare_clip(np.zeros((200, 8, 8, 3), np.uint8), 25.0,
                          np.zeros(5 * 32_000, np.float32), 32_000)  # fmt: skip
    assert len(v) == len(a) == 14
    with pytest.raises(ValueError, match="must be >= 4.8"):
        S.prepare_clip(np.zeros((200, 8, 8, 3), np.uint8), 25.0, np.zeros(128_000), 16_000, 4.0)


@pytest.mark.slow
def test_full_size_network_matches_the_reference():
    """The real sizes (14 x 14 patches, 12 heads of 64, 12 + 12 layers, 198 sync tokens) on
    seeded weights: one video segment, 14 audio segments, two windows of features."""
    g = GOLDEN["full"]
    state = seeded_state_dict(load_manifest("synchformer_keys.json"), seed=1)
    residual_out = ("attn.proj.weight", "mlp.fc2.weight", "output.dense.weight")
    state = {k: v * 0.3 if k.endswith(residual_out) else v for k, v in state.items()}
    net = S.Synchformer().eval()
    load_into(net, state, "seeded full-size synchformer")
    frames = seeded_uint8(g["video"]["frames"], g["video"]["seed"])
    audio = seeded_audio(g["audio"]["samples"], g["audio"]["seed"])
    gen = torch.Generator().manual_seed(0)
    v, a = torch.randn(2, 14, 8, 768, generator=gen), torch.randn(2, 14, 6, 768, generator=gen)
    with torch.no_grad():
        vf = net.video_features(S.video_input(frames)[None])
        af = net.audio_features(S.audio_input(audio))
        logits = net.compare(v, a)
    np.testing.assert_allclose(vf[0, :, ::16], g["vfeats"], rtol=1e-4, atol=1e-4)
    assert vf.double().sum().item() == pytest.approx(g["vfeats_sum"], rel=1e-4)
    np.testing.assert_allclose(af[[0, -1], :, ::16], g["afeats"], rtol=1e-4, atol=1e-4)
    assert af.double().sum().item() == pytest.approx(g["afeats_sum"], rel=1e-4)
    np.testing.assert_allclose(logits, g["logits"], rtol=1e-4, atol=1e-4)
