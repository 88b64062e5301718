"""`python scripts/train.py base=mmdiffusion_landscape data=landscape` end to end, tiny.

Tiny random MM-Diffusion checkpoints saved the official way (plain ``.pt`` state dicts with
the official names, converted to safetensors on first load), a Landscape-style folder (CSV
with a header), the in-domain discriminator config shrunk: real clips encoded (pixels and
waveform), fakes pre-sampled with the singlestep DPM-Solver, two D steps; then ``sample.py``
writes mp4s with sound after the super-resolution stage, and without it when switched off.
"""

from __future__ import annotations

import csv
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from script_runner import script
from test_bases_mmdiffusion_joint import TINY_SR, perturbed

from mmdisco.bases.mmdiffusion_sr import SuperResUNet
from mmdisco.bases.mmdiffusion_unet import CoupledUNet, CoupledUNetConfig
from mmdisco.media import read_video_with_audio, write_video_with_audio

CONFIGS = Path(__file__).parents[1] / "configs"

# 8 frames at 10 fps = 0.8 s = 12800 samples at 16 kHz (12800 = 25 * 4^3 * 8)
TINY = CoupledUNetConfig(
    video_size=(8, 3, 16, 16), audio_size=(1, 12800), model_channels=32, num_res_blocks=1,
    channel_mult=(1, 1, 1, 1), num_heads=2, num_head_channels=16,
)  # fmt: skip


def hydra_dict(config) -> str:
    items = ",".join(
        f"{k}:[{','.join(map(str, v))}]" if isinstance(v, tuple) else f"{k}:{v}"
        for k, v in asdict(config).items()
    )
    return "{" + items + "}"


def make_landscape_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    rows = [["path", "caption"]]
    for i, hz in enumerate([440.0, 660.0, 220.0]):
        t = np.arange(16000) / 16000
        frames = np.full((10, 40, 48, 3), 60 * i, dtype=np.uint8)
        write_video_with_audio(root / f"scene{i}.mp4", frames, 10.0,
                               0.3 * np.sin(2 * np.pi * hz * t), 16000)  # fmt: skip
        rows.append([f"scene{i}.mp4", ""])
    with open(root / "clips.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def test_train_and_sample_with_mmdiffusion(tmp_path):
    torch.manual_seed(0)
    torch.save(perturbed(CoupledUNet(TINY), 1).state_dict(), tmp_path / "landscape.pt")
    torch.save(perturbed(SuperResUNet(TINY_SR), 2).state_dict(), tmp_path / "landscape_SR.pt")
    data = make_landscape_folder(tmp_path / "landscape")
    overrides = [
        "base=mmdiffusion_landscape", "data=landscape", f"data.root={data}",
        f"data.csv={data / 'clips.csv'}", "data.duration=0.8",
        f"base.checkpoint={tmp_path / 'landscape.pt'}",
        f"base.sr_checkpoint={tmp_path / 'landscape_SR.pt'}",
        f"base.unet_config={hydra_dict(TINY)}", f"base.sr_config={hydra_dict(TINY_SR)}",
        "discriminator.channels=8", "discriminator.channel_mult=[1,2]",
        "discriminator.blocks_per_level=1", "discriminator.norm_groups=4",
        "discriminator.time_dim=16",
        "fake.num_pairs=2", "fake.batch_size=2", "fake.shard_size=2", "sampler.num_steps=3",
        "train.steps=2", "train.batch_size=2", "train.log_every=1", "train.ckpt_every=1",
        f"cache_dir={tmp_path / 'cache'}", f"run_dir={tmp_path / 'run'}",
        "threads=1", "progress=false",
    ]  # fmt: skip
    script("train.py", *overrides)
    run = tmp_path / "run"
    assert (run / "discriminator.safetensors").exists()
    assert (tmp_path / "landscape.safetensors").exists()  # converted once
    assert len(list((tmp_path / "cache").glob("latents-*/shard-*.safetensors"))) >= 1
    assert len(list((tmp_path / "cache").glob("fakes-*/shard-*.safetensors"))) == 1

    script("sample.py", f"run_dir={run}", "num_samples=2", "batch_size=2", "sampler.num_steps=3",
           "threads=1", "progress=false")  # fmt: skip
    mp4s = sorted((run / "guided").glob("*.mp4"))
    assert [p.name for p in mp4s] == ["00000.mp4", "00001.mp4"]
    frames, fps, audio, sr = read_video_with_audio(mp4s[0], mono=True)
    assert frames.shape == (8, 32, 32, 3) and fps == 10 and sr == 16000  # after SR (16 -> 32)
    assert abs(len(audio) - 12800) < 1100

    script("sample.py", f"run_dir={run}", "num_samples=1", "batch_size=1", "sampler.num_steps=3",
           "guided=false", "super_resolution=false", "threads=1",
           "progress=false")  # fmt: skip
    mp4s = sorted((run / "unguided").glob("*.mp4"))
    frames, fps, _, _ = read_video_with_audio(mp4s[0], mono=True)
    assert frames.shape == (8, 16, 16, 3)


@pytest.mark.parametrize("name", ["landscape", "aistpp"])
def test_configs_select_discriminator_solver_and_clips(name):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=[f"base=mmdiffusion_{name}", f"data={name}"])
    assert cfg.base._target_ == "mmdisco.bases.mmdiffusion.MMDiffusionBase.from_official"
    assert cfg.discriminator == OmegaConf.load(CONFIGS / "discriminator" / "mmdiffusion_ind.yaml")
    s = cfg.sampler
    assert (s.solver, s.num_steps, s.order) == ("dpm_singlestep", 20, 3)
    assert s.solver_options == {"thresholding": True, "percentile": 0.995}
    assert dict(cfg.guidance.joint_scales) == {"audio": 1.0, "video": 1.0}
    assert cfg.data.duration == 1.6  # 16 frames at 10 fps, 25600 samples at 16 kHz
