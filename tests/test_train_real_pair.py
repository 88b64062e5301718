"""`python scripts/train.py base=audioldm_animatediff data=vggsound` end to end, tiny.

Tiny random AudioLDM and AnimateDiff directories (the real classes, save_pretrained), a
VGGSound-style folder (headerless CSV, ``{ytid}_{start:0>6}.mp4`` names, one corrupt file),
the pair's own discriminator config shrunk: real latents cached, fake pairs pre-sampled with
prompts drawn from the captions, two D steps; then ``sample.py`` with prompts writes mp4s
with sound and a prompts.csv.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from script_runner import script
from test_bases_pairs import SIZE, compose_pair, save_tiny_animatediff
from tiny_audio_components import save_tiny_audioldm

from mmdisco.media import read_video_with_audio, write_video_with_audio


def make_vggsound_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    rows = []
    for i, (label, hz) in enumerate([("dog barking", 440.0), ("rain", 880.0), ("engine", 220.0)]):
        t = np.arange(32000) / 16000
        frames = np.full((16, 40, 48, 3), 40 * i, dtype=np.uint8)
        write_video_with_audio(root / f"clip{i}_000010.mp4", frames, 8.0,
                               0.3 * np.sin(2 * np.pi * hz * t), 16000)  # fmt: skip
        rows.append([f"clip{i}", "10", label, "train"])
    (root / "broken_000000.mp4").write_bytes(b"not an mp4")
    rows.append(["broken", "0", "silence", "train"])
    with open(root / "vggsound.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def test_train_and_sample_on_a_real_pair_with_a_folder_data_set(tmp_path):
    audio_dir = save_tiny_audioldm(tmp_path / "audio")
    video_dir = save_tiny_animatediff(tmp_path / "video")
    data = make_vggsound_folder(tmp_path / "vgg")
    cfg = compose_pair("audioldm_animatediff", audio_dir, video_dir, [])
    bases = instantiate(cfg.base)
    dims = {m: bases[m].encode_prompt(["x"]).pooled.shape[-1] for m in ("audio", "video")}
    overrides = [
        "base=audioldm_animatediff", "data=vggsound", f"data.root={data}",
        f"data.csv={data / 'vggsound.csv'}",
        f"base.audio.pretrained={audio_dir}", f"base.video.pretrained={video_dir}",
        "base.video.motion_adapter=null", "base.video.vae=null",
        *(f"base.video.{k}={v}" for k, v in SIZE.items()),
        "discriminator.channels=8", "discriminator.channel_mult=[1,2]",
        "discriminator.blocks_per_level=1", "discriminator.norm_groups=4",
        "discriminator.time_dim=16", f"discriminator.audio_text_dim={dims['audio']}",
        f"discriminator.video_text_dim={dims['video']}",
        "fake.num_pairs=2", "fake.batch_size=2", "fake.shard_size=2", "sampler.num_steps=2",
        "train.steps=2", "train.batch_size=2", "train.log_every=1", "train.ckpt_every=1",
        f"cache_dir={tmp_path / 'cache'}", f"run_dir={tmp_path / 'run'}",
        "threads=1", "progress=false",
    ]  # fmt: skip
    proc = script("train.py", *overrides)
    log = proc.stdout + proc.stderr
    assert "broken_000000.mp4" in log  # the corrupt clip is skipped, named, not fatal
    run = tmp_path / "run"
    assert (run / "discriminator.safetensors").exists()
    assert len(list((tmp_path / "cache").glob("latents-*/shard-*.safetensors"))) >= 1
    assert len(list((tmp_path / "cache").glob("fakes-*/shard-*.safetensors"))) == 1

    script("sample.py", f"run_dir={run}", "num_samples=2", "batch_size=2",
           "prompts=[a dog barking]", "sampler.num_steps=2", "threads=1",
           "progress=false")  # fmt: skip
    mp4s = sorted((run / "guided").glob("*.mp4"))
    assert [p.name for p in mp4s] == ["00000.mp4", "00001.mp4"]
    frames, fps, audio, sr = read_video_with_audio(mp4s[0], mono=True)
    assert frames.shape == (16, 32, 32, 3) and fps == 8 and sr == 16000
    with open(run / "guided" / "prompts.csv") as f:
        assert list(csv.reader(f)) == [
            ["file", "prompt"],
            ["00000.mp4", "a dog barking"],
            ["00001.mp4", "a dog barking"],
        ]
