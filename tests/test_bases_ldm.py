"""Shared latent-diffusion plumbing: schedules from scheduler configs, pretrained-dir checks,
the per-frame VAE, frame resizing and CLIP text embeddings."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from tiny_components import tiny_clip_text_model, tiny_clip_tokenizer, tiny_vae

from mmdisco.bases import ldm
from mmdisco.pretrained import resolve_pretrained


@pytest.mark.parametrize("kind", ["linear", "scaled_linear"])
def test_schedule_matches_diffusers(kind):
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule=kind)
    schedule, prediction = ldm.schedule_from_scheduler_config(scheduler.config)
    expected = scheduler.alphas_cumprod.double()
    torch.testing.assert_close(schedule.alpha**2, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(schedule.sigma**2, 1 - expected, rtol=1e-5, atol=1e-7)
    assert prediction == "epsilon"


def test_schedule_overrides_and_trained_betas():
    cfg = {"beta_schedule": "scaled_linear", "prediction_type": "v_prediction", "unused": 1}
    linear, prediction = ldm.schedule_from_scheduler_config(cfg, beta_schedule="linear")
    assert prediction == "v_prediction"
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    torch.testing.assert_close(linear.alpha**2, torch.cumprod(1 - betas, 0))
    given, _ = ldm.schedule_from_scheduler_config({"trained_betas": betas.tolist()})
    torch.testing.assert_close(given.alpha, linear.alpha)
    scaled, _ = ldm.schedule_from_scheduler_config({}, scale_b=0.5, scale_steps=10)
    assert scaled.alpha[9] / linear.alpha[9] == pytest.approx(0.5)
    assert scaled.alpha[0] / linear.alpha[0] == pytest.approx(1.0)


def test_missing_local_dir_lists_every_file_and_hint(tmp_path):
    required = ldm.component_files("unet") + ldm.component_files("scheduler", "scheduler")
    with pytest.raises(FileNotFoundError) as err:
        resolve_pretrained(tmp_path / "absent", required, "Get it from org/model.")
    msg = str(err.value)
    assert "does not exist" in msg and "Get it from org/model." in msg
    assert "unet/config.json" in msg and "unet/diffusion_pytorch_model.safetensors" in msg
    assert "scheduler/scheduler_config.json" in msg
    (tmp_path / "partial" / "unet").mkdir(parents=True)
    (tmp_path / "partial" / "unet" / "config.json").write_text("{}")
    (tmp_path / "partial" / "unet" / "model.safetensors").write_text("")  # any weight name
    with pytest.raises(FileNotFoundError, match="lacks scheduler/scheduler_config.json\\."):
        resolve_pretrained(tmp_path / "partial", required, "")


def test_uncached_hub_id_offline_is_one_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError) as err:
        resolve_pretrained("mmdisco-tests/not-a-model", ldm.component_files("vae"), "hint!")
    msg = str(err.value)
    assert "mmdisco-tests/not-a-model" in msg and "vae/config.json" in msg and "hint!" in msg


def test_vae_per_frame_and_chunking():
    vae = tiny_vae()
    x = torch.rand(2, 3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = ldm.vae_encode(vae, x, chunk=4, posterior="mean")
    assert z.shape == (2, 4, 3, 8, 8)
    torch.testing.assert_close(
        z, ldm.vae_encode(vae, x, chunk=1, posterior="mean"), rtol=1e-5, atol=1e-6
    )
    frame = vae.encode(x[1, :, 2][None]).latent_dist.mean * 0.18215  # sample 1, frame 2
    torch.testing.assert_close(z[1, :, 2], frame[0], rtol=1e-5, atol=1e-6)
    y = ldm.vae_decode(vae, z, chunk=5)
    assert y.shape == x.shape
    torch.testing.assert_close(y[0, :, 1], vae.decode(z[0, :, 1][None] / 0.18215).sample[0])


def test_frames_resize_and_centre_crop():
    frames = torch.full((1, 2, 16, 32, 3), 128, dtype=torch.uint8)
    frames[..., :8, :] = 0  # left and right quarters differ from the middle half
    frames[..., 24:, :] = 255
    x = ldm.frames_to_tensor(frames, 16, 16)  # no resize: the crop keeps the middle
    assert x.shape == (1, 3, 2, 16, 16)
    torch.testing.assert_close(x, torch.full_like(x, 128 / 127.5 - 1))
    assert torch.equal(ldm.tensor_to_frames(x), frames[:, :, :, 8:24])
    small = ldm.frames_to_tensor(frames, 8, 8)  # halved to 8x16, then cropped
    assert small.shape == (1, 3, 2, 8, 8)  # (antialiasing blends the outermost columns)
    inner = small[..., 1:-1]
    torch.testing.assert_close(inner, torch.full_like(inner, 128 / 127.5 - 1), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="uint8"):
        ldm.frames_to_tensor(frames.float(), 8, 8)


def test_text_embeddings_layers_and_condition(tmp_path):
    tokenizer = tiny_clip_tokenizer(tmp_path / "tok")
    encoder = tiny_clip_text_model(tokenizer, layers=3)
    prompts = ["a cat", "dog"]
    last = ldm.clip_text_embeddings(tokenizer, encoder, prompts)
    ids = tokenizer(prompts, padding="max_length", return_tensors="pt").input_ids
    out = encoder(ids, output_hidden_states=True)
    torch.testing.assert_close(last, out.last_hidden_state)
    penultimate = ldm.clip_text_embeddings(tokenizer, encoder, prompts, layer=2)
    torch.testing.assert_close(penultimate, encoder.final_layer_norm(out.hidden_states[2]))
    assert (penultimate - last).abs().max() > 1e-3
    torch.testing.assert_close(ldm.clip_text_embeddings(tokenizer, encoder, prompts, 3), last)
    with pytest.raises(ValueError, match="layer 4"):
        ldm.clip_text_embeddings(tokenizer, encoder, prompts, layer=4)
    cond = ldm.text_condition(tokenizer, encoder, prompts, 3.0)
    assert cond.cond.shape == (2, 16, 32) and cond.uncond.shape == (1, 16, 32)
    torch.testing.assert_close(cond.uncond, ldm.clip_text_embeddings(tokenizer, encoder, [""]))
    torch.testing.assert_close(cond.pooled, last.mean(1))
    assert cond.pooled_uncond.shape == (1, 32) and cond.uses_cfg


def test_vae_encode_posterior_sample_is_seeded_by_content_and_mean_on_request():
    """Real latents are a posterior sample as in the official code, the same for the same
    input whatever its batch; "mean" gives the posterior mean."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 8), norm_num_groups=4, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    ).eval()  # fmt: skip
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    mean = ldm.vae_encode(vae, x, posterior="mean")
    dist = vae.encode(x).latent_dist
    torch.testing.assert_close(mean, dist.mean * vae.config.scaling_factor)
    sample = ldm.vae_encode(vae, x)
    again = ldm.vae_encode(vae, x[[2, 0, 1]], chunk=1)[[1, 2, 0]]  # other batch, other order
    torch.testing.assert_close(sample, again)
    assert not torch.allclose(sample, mean)
    z = (sample / vae.config.scaling_factor - dist.mean) / dist.std  # standard normal draws
    assert abs(z.mean().item()) < 0.2 and abs(z.std().item() - 1) < 0.2
    with pytest.raises(ValueError, match="posterior"):
        ldm.vae_encode(vae, x, posterior="mode")
