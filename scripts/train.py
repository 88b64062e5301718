"""Train the MMDisCo discriminator on top of two frozen base models (paper Algorithm 1).

    python scripts/train.py base=toy data=toy_ind run_dir=runs/toy_ind
    python scripts/train.py base=toy data=toy_ood loss.bce=false run_dir=runs/ood_dsm
    accelerate launch --num_processes 8 scripts/train.py experiment=synthetic \
        train.mixed_precision=bf16

Stages: base models -> real pairs -> fake pairs (sampled once, cached) -> D training with
JointLoss (``mmdisco.training.train``). ``train.batch_size`` is the global batch over all
processes. Re-running with the same run_dir resumes from its last checkpoint.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from mmdisco.config import exit_on_moved_keys
from mmdisco.training import train
from mmdisco.validate import validate_train


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    validate_train(cfg)  # every value and path, before any heavy work (mmdisco.validate)
    weights = train(cfg)
    print(f"discriminator saved to {weights}")


if __name__ == "__main__":
    exit_on_moved_keys(sys.argv[1:])
    main()
