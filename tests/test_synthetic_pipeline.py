"""`make demo`'s path, shrunk: the synthetic world through the public scripts.

``experiment=synthetic`` (the shipped bases, the generated paired data set, fake pairs,
discriminator training) -> ``sample.py`` unguided and guided (mp4s with sound, same names
= same seeds) -> ``evaluate.py`` over both folders. Tiny sizes: 12 clips, 8 fake pairs,
4 training steps, 3 sampling steps.
"""

from __future__ import annotations

import json

import pytest
from script_runner import script

from mmdisco.media import read_video_with_audio


def test_synthetic_world_end_to_end(tmp_path):
    run = tmp_path / "run"
    common = ["progress=false", "threads=1"]
    script(
        "train.py", "experiment=synthetic", f"run_dir={run}", f"cache_dir={tmp_path}/cache",
        "data.num_clips=12", "fake.num_pairs=8", "fake.batch_size=4", "fake.shard_size=4",
        "train.steps=4", "train.batch_size=4", "train.log_every=2", "train.ckpt_every=2",
        "sampler.num_steps=3", "calibration.pairs=2", "calibration.grid=[1,100]",
        "loss.contrastive.group=4", *common,
    )  # fmt: skip
    for f in ("discriminator.safetensors", "train_log.csv", "config.yaml"):
        assert (run / f).exists(), f
    # the world's recipe: the batch InfoNCE + pairwise BCE (README "Guidance that aligns")
    log = (run / "train_log.csv").read_text().splitlines()
    header, last = log[0].split(","), dict(zip(log[0].split(","), log[-1].split(",")))
    assert "l_nce" in header and "l_pbce" in header and float(last["l_dsm"]) == 0.0
    assert float(last["loss"]) == pytest.approx(float(last["l_nce"]) + float(last["l_pbce"]))
    assert float(last["lr"]) < 2e-3  # cosine-decayed
    # the joint scales chosen after training by the decoders (no hand-set scale): the grid's
    # best, then lowered per bucket of t where that scores as well
    scales = json.loads((run / "joint_scales.json").read_text())
    assert scales["criterion"] == "alignment" and {"1", "100"} <= set(scales["grid_scores"])
    assert scales["audio"] == scales["video"] and len(scales["audio"]) == 4
    assert set(scales["audio"]) <= {1.0, 100.0} and "dsm_scales" in scales
    sampling = ["num_samples=3", "batch_size=2", "sampler.joint_num_steps=2", *common]
    script("sample.py", f"run_dir={run}", "guided=false", *sampling)
    script("sample.py", f"run_dir={run}", "guided=true", *sampling)
    names = {d: sorted(p.name for p in (run / d).glob("*.mp4")) for d in ("unguided", "guided")}
    assert names["unguided"] == names["guided"] == ["00000.mp4", "00001.mp4", "00002.mp4"]
    frames, fps, audio, sr = read_video_with_audio(run / "guided" / "00000.mp4", mono=True)
    assert frames.shape == (8, 32, 32, 3) and fps == 8 and sr == 16_000
    assert abs(len(audio) - 16_000) <= 160
    out = script(
        "evaluate.py", f"run_dir={run}", "samples=[unguided,guided]", "progress=false"
    ).stdout
    assert ["unguided", "guided"] in [line.split() for line in out.splitlines()], out
    for row in ("video_valid", "audio_valid", "semantic", "temporal"):
        assert any(line.startswith(row) for line in out.splitlines()), row
    metrics = json.loads((run / "guided_metrics.json").read_text())
    assert metrics["num_clips"] == 3 and len(metrics["clips"]) == 3
