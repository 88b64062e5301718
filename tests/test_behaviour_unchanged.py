"""Public behaviour kept through the issue-11 redesign: the same command gives byte-identical
discriminator weights on the synthetic world and on the toy.

The golden hash is of ``discriminator.safetensors`` written by this command at commit 3dd2bd4
(before the redesign: sampler-built guidance, data/cache.py + fakes.py) on the project's CI
machine with one thread; every issue-11 commit reproduced it. Defaults changed since (issue 10:
held-out calibration pairs, the synthetic world's contrastive loss and cosine lr) are pinned to
their values at that commit.
"""

import hashlib

from script_runner import script

GOLDEN_SHA256 = "88d7d6b1878d43a0498b451ca64ac7c1a3152e972ea354765b06d4dc3eeef1f8"
COMMAND = [
    "experiment=synthetic", "train.steps=5", "train.batch_size=8", "fake.num_pairs=16",
    "fake.batch_size=8", "fake.shard_size=8", "data.num_clips=24", "threads=1",
    "progress=false", "train.tensorboard=false",
    "calibration.holdout=0", "loss.t_power=2", "loss.dsm_reduction=mean",
    "loss.dsm_weighting=eps", "loss.negatives=null", "loss.bce=true", "loss.lambda_dsm=1.0",
    "loss.contrastive=null", "train.lr_decay=null",
]  # fmt: skip


def test_a_short_synthetic_run_gives_the_weights_it_gave_before_the_redesign(tmp_path):
    run = tmp_path / "run"
    script("train.py", *COMMAND, f"run_dir={run}", f"cache_dir={tmp_path / 'cache'}")
    digest = hashlib.sha256((run / "discriminator.safetensors").read_bytes()).hexdigest()
    assert digest == GOLDEN_SHA256


TOY_GOLDEN_SHA256 = "3d60b6a7630ae86b7d9511db6747201baf259706a9e161d4d891ad32426ad5b2"
TOY_COMMAND = [
    "base.train_steps=20", "train.steps=5", "fake.num_pairs=64", "fake.batch_size=32",
    "train.batch_size=16", "threads=1", "progress=false", "train.tensorboard=false",
    "calibration.holdout=0",
]  # fmt: skip


def test_a_short_toy_run_gives_the_weights_it_gave_before_the_redesign(tmp_path):
    """The toy (train.py's default base and data) at commit 3dd2bd4 wrote these weights: its
    fakes were batch j from Generator(seed + j), which ``fake.seeding=per_batch`` (the toy's
    default) keeps."""
    run = tmp_path / "run"
    script("train.py", *TOY_COMMAND, f"run_dir={run}", f"cache_dir={tmp_path / 'cache'}")
    digest = hashlib.sha256((run / "discriminator.safetensors").read_bytes()).hexdigest()
    assert digest == TOY_GOLDEN_SHA256
