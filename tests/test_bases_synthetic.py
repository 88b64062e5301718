"""The synthetic world's bases: save/load, codecs, shapes, eps conversion, shipped weights."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from mmdisco.bases import IndependentBases
from mmdisco.bases.synthetic import (
    REQUIRED_FILES,
    FrameCodec,
    LogSpectrogramCodec,
    PackedUNet,
    SyntheticAudioBase,
    SyntheticVideoBase,
)
from mmdisco.data import synthetic as W
from mmdisco.metrics.synthetic import decode_audio, decode_video
from mmdisco.sampling import JointSampler

TINY = dict(block_out_channels=(8, 16), norm_num_groups=4, mid_attention=False)
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "assets" / "synthetic"
CLIPS = [(0, 1, (6, 6)), (1, 3, (25, 12)), (2, 5, (15, 20)), (3, 6, (10, 25))]


def tiny(cls, seed=0, **kw):
    torch.manual_seed(seed)
    return cls.create(**{**TINY, **kw}).eval()


def public(config):
    return {k: v for k, v in config.items() if not k.startswith("_")}


def real_media(clips=CLIPS):
    frames, audio = zip(*(W.render_clip(k, o, c) for k, o, c in clips))
    return np.stack(frames), np.stack(audio)


@pytest.mark.parametrize("cls", [SyntheticAudioBase, SyntheticVideoBase])
def test_save_pretrained_round_trip(cls, tmp_path, gen):
    base = tiny(cls)
    base.save_pretrained(tmp_path / "base")
    loaded = cls.from_pretrained(tmp_path / "base")
    x_t = torch.randn(base.sample_shape(3), generator=gen)
    t = torch.tensor([0, 500, 999])
    assert torch.equal(base.model_output(x_t, t, None), loaded.model_output(x_t, t, None))
    assert loaded.prediction_type == "sample"
    assert torch.equal(loaded.schedule.alpha, base.schedule.alpha)
    assert public(loaded.codec.config) == public(base.codec.config)
    assert not any(p.requires_grad for p in loaded.parameters())
    # overwriting goes through a temporary directory and leaves nothing else behind
    tiny(cls, seed=1).save_pretrained(tmp_path / "base")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]
    again = cls.from_pretrained(tmp_path / "base")
    assert not torch.equal(again.model_output(x_t, t, None), loaded.model_output(x_t, t, None))


def test_fp16_storage_loads_as_float32(tmp_path, gen):
    base = tiny(SyntheticVideoBase)
    base.save_pretrained(tmp_path / "v", dtype=torch.float16)
    loaded = SyntheticVideoBase.from_pretrained(tmp_path / "v")
    assert next(loaded.parameters()).dtype == torch.float32
    assert next(base.parameters()).dtype == torch.float32  # the saved model is left as it was
    x_t = torch.randn(base.sample_shape(2), generator=gen)
    t = torch.tensor([10, 700])
    a, b = base.model_output(x_t, t, None), loaded.model_output(x_t, t, None)
    assert torch.allclose(a, b, atol=1e-2) and not torch.equal(a, b)


def test_schedule_is_the_stored_ddpm_scheduler(tmp_path):
    base = tiny(SyntheticAudioBase, scheduler=dict(beta_schedule="scaled_linear"))
    base.save_pretrained(tmp_path / "a")
    sched = DDPMScheduler.from_pretrained(tmp_path / "a", subfolder="scheduler")
    assert sched.config.prediction_type == "sample"
    assert torch.allclose(base.schedule.alpha_bar.float(), sched.alphas_cumprod, atol=1e-6)


def test_missing_pretrained_dir_says_what_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        SyntheticAudioBase.from_pretrained(tmp_path / "nowhere")
    msg = str(err.value)
    assert "does not exist" in msg and "scripts/train_base.py" in msg
    assert all(f in msg for f in REQUIRED_FILES)
    tiny(SyntheticAudioBase).save_pretrained(tmp_path / "a")
    (tmp_path / "a" / "codec" / "codec_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="lacks codec/codec_config.json"):
        SyntheticAudioBase.from_pretrained(tmp_path / "a")


def test_relative_pretrained_path_falls_back_to_the_repo_root(tmp_path, monkeypatch):
    import mmdisco.pretrained as P

    tiny(SyntheticVideoBase).save_pretrained(tmp_path / "repo" / "assets" / "v")
    monkeypatch.setattr(P, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    SyntheticVideoBase.from_pretrained("assets/v")  # not in the working directory


def test_encode_shape_is_sample_shape():
    frames, audio = real_media()
    for cls, media in ((SyntheticAudioBase, audio), (SyntheticVideoBase, frames)):
        base = tiny(cls)
        z = base.encode(media)
        assert tuple(z.shape) == base.sample_shape(len(CLIPS))
        assert z.dtype == torch.float32
        assert -1.0001 <= z.min() and z.max() <= 1.0001


def test_encode_rejects_wrong_media():
    with pytest.raises(ValueError, match="uint8"):
        FrameCodec().encode(np.zeros((1, 8, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="16000"):
        LogSpectrogramCodec().encode(np.zeros((1, 8000), np.float32))


def test_audio_round_trip_keeps_class_and_onset():
    _, audio = real_media()
    codec = LogSpectrogramCodec()
    out = codec.decode(codec.encode(audio))
    assert out.shape == (len(CLIPS), W.NUM_SAMPLES) and out.dtype == torch.float32
    for (k, onset, _), wave in zip(CLIPS, out.numpy()):
        assert decode_audio(wave) == decode_audio(W.render_audio(k, onset))
        assert decode_audio(wave).valid and decode_audio(wave).label == k
        assert decode_audio(wave).onset == onset
    # a latent of silence decodes to silence, not to noise
    assert codec.decode(-torch.ones(1, *codec.latent_shape)).abs().max() < 1e-3


@pytest.mark.parametrize("downsample", [1, 2])
def test_video_round_trip_keeps_class_and_onset(downsample):
    frames, _ = real_media()
    codec = FrameCodec(downsample=downsample)
    out = codec.decode(codec.encode(frames))
    assert out.shape == frames.shape and out.dtype == torch.uint8
    if downsample == 1:
        assert torch.equal(out, torch.from_numpy(frames))
    for (k, onset, _), video in zip(CLIPS, out.numpy()):
        assert decode_video(video) == W_decoded(k, onset)


def W_decoded(k, onset):
    from mmdisco.metrics.synthetic import Decoded

    return Decoded(True, k, onset)


def test_to_eps_inverts_the_x0_prediction(gen):
    """x_t = alpha x0_hat + sigma eps_hat for the eps the library gets, and a perfect x0 output
    gives back the noise that was added."""
    base = tiny(SyntheticVideoBase)
    x0 = base.encode(real_media()[0])
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.tensor([3, 250, 600, 990])
    x_t = base.schedule.add_noise(x0, noise, t)
    alpha, sigma = (c.float().view(-1, 1, 1, 1, 1) for c in base.schedule.coefficients(t))
    eps = base.predict_noise(x_t, t)
    x0_hat = base.model_output(x_t, t, None)
    assert torch.allclose(alpha * x0_hat + sigma * eps, x_t, atol=1e-4)
    assert torch.allclose(base.to_eps(x0, x_t, t), noise, atol=1e-3)


@pytest.mark.parametrize(
    "shape, axes, r, packed",
    [
        ((3, 8, 16, 16), (1, 2), 1, (48, 8, 16)),  # (F, H) image, colour x columns as channels
        ((3, 8, 16, 16), (2, 3), 1, (24, 16, 16)),  # frames in channels
        ((1, 64, 64), (1, 2), 4, (16, 16, 16)),  # (T, F) image, 4x4 unshuffle
    ],
)
def test_packed_unet_pack_unpack(shape, axes, r, packed, gen):
    net = PackedUNet(latent_shape=shape, image_axes=axes, unshuffle=r, **TINY)
    x = torch.randn(2, *shape, generator=gen)
    h = net.pack(x)
    assert h.shape == (2, *packed)
    assert torch.equal(net.unpack(h), x)
    if axes == (1, 2) and len(shape) == 4:  # pixel (f, y) of channel (c, w) is x[c, f, y, w]
        assert torch.equal(h[:, 2 * 16 + 3, 6, 1], x[:, 2, 6, 1, 3])


def test_denoising_loss_is_min_snr_weighted_x0_error(gen):
    base = tiny(SyntheticAudioBase)
    x0 = torch.rand(2, *base.sample_shape(1)[1:], generator=gen) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    for step, weight in ((999, 4.0e-5), (5, 5.0)):  # SNR at t = 999; capped at 5 near t = 0
        t = torch.full((2,), step)
        alpha, sigma = (float(c[0]) for c in base.schedule.coefficients(t))
        assert min(alpha**2 / sigma**2, 5.0) == pytest.approx(weight, rel=0.05)
        x0_hat = base.model_output(alpha * x0 + sigma * noise, t, None)
        expected = min(alpha**2 / sigma**2, 5.0) * ((x0_hat - x0) ** 2).mean()
        assert torch.allclose(base.denoising_loss(x0, noise, t, snr_gamma=5.0), expected)


def test_sampling_and_decoding_shapes(gen):
    bases = IndependentBases(audio=tiny(SyntheticAudioBase), video=tiny(SyntheticVideoBase))
    out = JointSampler(bases, solver="ddim", num_steps=2).sample(2, generator=gen)
    assert out["audio"].shape == bases["audio"].sample_shape(2)
    assert out["video"].shape == bases["video"].sample_shape(2)
    wave, frames = bases["audio"].decode(out["audio"]), bases["video"].decode(out["video"])
    assert wave.shape == (2, W.NUM_SAMPLES) and wave.dtype == torch.float32
    assert frames.shape == (2, W.NUM_FRAMES, W.FRAME_SIZE, W.FRAME_SIZE, 3)
    assert frames.dtype == torch.uint8


@pytest.mark.skipif(not (SHIPPED / "audio").exists(), reason="no shipped weights")
def test_shipped_bases_generate_valid_clips():
    """The weights in assets/synthetic load and make mostly valid clips on their own."""
    n = 8
    bases = IndependentBases(
        audio=SyntheticAudioBase.from_pretrained(SHIPPED / "audio"),
        video=SyntheticVideoBase.from_pretrained(SHIPPED / "video"),
    )
    out = JointSampler(bases, solver="ddim", num_steps=25).sample(
        n, generator=torch.Generator().manual_seed(0)
    )
    audio = [decode_audio(a) for a in bases["audio"].decode(out["audio"]).numpy()]
    video = [decode_video(v) for v in bases["video"].decode(out["video"]).numpy()]
    assert sum(d.valid for d in audio) >= n - 2, [d.reason for d in audio]
    assert sum(d.valid for d in video) >= n - 3, [d.reason for d in video]


def test_train_base_script_end_to_end(tmp_path):
    """scripts/train_base.py: data set -> two bases trained (2 steps) -> saved -> evaluated."""
    spec = importlib.util.spec_from_file_location("train_base", ROOT / "scripts" / "train_base.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    common = [
        *("--data-dir", str(tmp_path / "data"), "--num-clips", "4"),
        *("--out", str(tmp_path / "bases"), "--eval-dir", str(tmp_path / "eval")),
        *("--num-eval", "2", "--sample-steps", "2", "--no-progress"),
    ]
    summary = script.main([*common, "--audio-steps", "2", "--video-steps", "2"])
    assert set(summary) == {"audio", "video", "timings"}
    assert 0.0 <= summary["audio"]["valid"] <= 1.0 and 0.0 <= summary["video"]["valid"] <= 1.0
    assert len(list((tmp_path / "eval").glob("*.mp4"))) == 2
    video = SyntheticVideoBase.from_pretrained(tmp_path / "bases" / "video")
    assert video.denoiser.config.data_mean == pytest.approx(-0.95, abs=0.03)  # mostly black
    again = script.main([*common, "--eval-only"])
    assert "audio_train_s" not in again["timings"]
    with pytest.raises(SystemExit, match="no saved base"):
        script.main([*common, "--eval-only", "--out", str(tmp_path / "none")])
