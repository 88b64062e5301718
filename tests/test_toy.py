"""The toy experiment through the public scripts, plus its pieces."""

import json
import re

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from script_runner import script

from mmdisco.bases.toy import ToyBase, train_toy_base
from mmdisco.data.toy import GaussianMixture, ToyPairs
from mmdisco.metrics.toy import toy_metrics

TINY = [
    "base.train_steps=30",
    "base.hidden=[8,16,8]",
    "base.time_dim=16",
    "base.num_samples=50",
    "fake.num_pairs=40",
    "fake.batch_size=40",
    "sampler.num_steps=10",
    "train.steps=20",
    "train.batch_size=16",
    "train.log_every=5",
    "train.ckpt_every=10",
    "progress=false",
]


def test_mixture_log_prob_matches_scipy():
    means, std = [[0.0, 1.0], [2.0, -1.0], [-1.5, 0.5]], 0.3
    x = torch.randn(50, 2, dtype=torch.float64)
    ref = np.log(
        np.mean([multivariate_normal(m, std**2 * np.eye(2)).pdf(x.numpy()) for m in means], 0)
    )
    np.testing.assert_allclose(GaussianMixture(means, std).log_prob(x).numpy(), ref, rtol=1e-10)


def test_toy_metrics_by_hand():
    target = GaussianMixture([[0.0, 0.0], [2.0, 2.0]], 0.1)
    x = torch.tensor([[0.0, 0.0], [0.05, 0.0], [2.0, 2.2], [1.0, 1.0]])
    m = toy_metrics(x, target)
    assert m["precision"] == pytest.approx(0.75)  # (1, 1) is 14 std from both peaks
    assert m["peaks_covered"] == 2
    # -log p at a peak centre: log(2) + log(2 pi 0.01) ... computed by hand
    at_centre = np.log(2) + np.log(2 * np.pi * 0.01) - 0.0
    at_centre = -(-np.log(2 * np.pi * 0.01) - np.log(2))
    assert -target.log_prob(x[:1]).item() == pytest.approx(at_centre, rel=1e-6)


def test_bad_layouts_give_one_clear_error():
    with pytest.raises(ValueError, match="same length"):
        ToyPairs([[0.0, 1.0], [2.0]], 0.1)
    with pytest.raises(ValueError, match=r"\[audio, video\] pairs"):
        ToyPairs([[0.0, 1.0, 2.0]], 0.1)
    with pytest.raises(ValueError, match="std must be positive"):
        ToyPairs([[0.0, 1.0]], -0.1)
    with pytest.raises(ValueError, match="std must be positive"):
        GaussianMixture([0.0, 1.0], 0.0)


def test_missing_checkpoint_path_lists_expected_files(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="denoiser/config.json.*scheduler/scheduler_config.json"
    ):
        ToyBase.from_pretrained(tmp_path / "nope")


def test_toy_base_save_and_load_round_trip(tmp_path):
    base = train_toy_base(
        [-1.0, 1.0], 0.1, 20, [8, 8], 8, 50, 1e-4, 0.02, 3, 8, 1e-3, 0, progress=False
    )
    base.save_pretrained(tmp_path / "toy")
    loaded = ToyBase.from_pretrained(tmp_path / "toy")
    x, t = torch.randn(5, 1), torch.tensor([0, 3, 10, 30, 49])
    assert torch.equal(base.predict_noise(x, t), loaded.predict_noise(x, t))
    assert torch.equal(loaded.schedule.alpha, base.schedule.alpha)


def test_train_sample_evaluate_scripts(tmp_path):
    run = tmp_path / "run"
    layout = [
        "data.peaks=[[0.0,0.0],[1.0,1.0],[2.0,-1.0]]",
        "data.std=0.2",
        "base.peaks=[0.0,1.0,2.0,-1.0]",
        "base.std=0.2",
        "loss.lambda_dsm=0.5",
    ]
    script(
        "train.py",
        "base=toy",
        "data=toy_ind",
        f"run_dir={run}",
        f"cache_dir={tmp_path}/cache",
        *layout,
        *TINY,
    )
    for f in ["config.yaml", "discriminator.safetensors", "train_log.csv"]:
        assert (run / f).exists(), f
    # the toy's pairs went through the pair store like every data set's
    assert len(list((tmp_path / "cache").glob("latents-*/index.json"))) == 1
    assert len(list((tmp_path / "cache").glob("fakes-*/index.json"))) == 1
    script("sample.py", f"run_dir={run}", "num_samples=30", "batch_size=16", "progress=false")
    samples = np.load(run / "samples.npz")
    assert samples["audio"].shape == (30, 1) and samples["video"].shape == (30, 1)
    assert (run / "samples.png").exists()
    out = script("evaluate.py", f"run_dir={run}").stdout
    assert "precision" in out and "peaks_covered" in out and "/ 3" not in out
    assert (run / "samples_metrics.json").exists()
    # the layout override reached the target density
    assert re.search(r"num_peaks\s+3\n", out), out
    # train.py calibrated the joint scales on the held-out pairs; calibrate.py redoes it
    first = json.loads((run / "joint_scales.json").read_text())
    assert first["heldout_pairs"] > 0 and isinstance(first["audio"], float)
    script("calibrate.py", f"run_dir={run}", "calibration.per_bucket=true", "progress=false")
    per_bucket = json.loads((run / "joint_scales.json").read_text())
    assert len(per_bucket["audio"]) == len(per_bucket["video"]) == 4
    for m in ("audio", "video"):  # the per-bucket s*, negative ones clipped to 0 (guidance off)
        by_t = per_bucket["diagnostics"][m]["scale_by_t"]
        assert per_bucket[m] == pytest.approx([max(0.0, s) for s in by_t])


def test_resume_after_interruption_is_bit_identical(tmp_path):
    common = ["base=toy", "data=toy_ood", f"cache_dir={tmp_path}/cache", *TINY]
    script("train.py", *common, f"run_dir={tmp_path}/full")
    script("train.py", *common, f"run_dir={tmp_path}/cut", "train.steps=10")  # "killed" at 10
    script("train.py", *common, f"run_dir={tmp_path}/cut")  # resumes from the step-10 checkpoint
    from mmdisco.io import load_tensors

    a = load_tensors(tmp_path / "full" / "discriminator.safetensors")
    b = load_tensors(tmp_path / "cut" / "discriminator.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_scripts_report_bad_input_in_one_line(tmp_path):
    proc = script(
        "train.py",
        "base=toy",
        "data=toy_ind",
        f"run_dir={tmp_path}/r",
        "data.std=-1",
        f"cache_dir={tmp_path}/cache",
        *TINY,
        check=False,
    )
    assert proc.returncode != 0 and "std must be positive" in proc.stderr
    proc = script(
        "train.py",
        "base=toy",
        f"run_dir={tmp_path}/r",
        "base.pretrained=/no/such/dir",
        *TINY,
        check=False,
    )
    assert proc.returncode != 0 and "Expected files" in proc.stderr
    proc = script("sample.py", f"run_dir={tmp_path}/missing", check=False)
    assert proc.returncode != 0 and "is not a training run" in proc.stderr
