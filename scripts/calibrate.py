"""Joint scales of a trained run from its held-out real pairs (``joint_scales=auto``).

``train.py`` does this after training (``calibration.holdout > 0``); run it again to change the
calibration settings or to calibrate a run trained before them:

    python scripts/calibrate.py run_dir=outputs/demo
    python scripts/calibrate.py run_dir=outputs/demo calibration.per_bucket=true

Writes ``run_dir/joint_scales.json``: the L_DSM-optimal scale s* per modality (or per bucket of
t) and its diagnostics (residual / base-noise ratio, cosine with the base's error).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from accelerate import Accelerator
from omegaconf import DictConfig, OmegaConf

from mmdisco.pairs.prepare import real_pairs
from mmdisco.runs import WEIGHTS_FILE, load_run, setup_torch
from mmdisco.training import calibrate_run, holdout_count


@hydra.main(config_path="../configs", config_name="calibrate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    device = setup_torch(cfg.device, cfg.threads)
    run = load_run(cfg.run_dir, device, with_discriminator=False)
    train_cfg = run.cfg
    overrides = {k: v for k, v in OmegaConf.to_container(cfg.calibration).items() if v is not None}
    train_cfg.calibration = OmegaConf.merge(train_cfg.get("calibration") or {}, overrides)
    accelerator = Accelerator(cpu=device.type == "cpu")
    real = real_pairs(run.data, run.bases, train_cfg, accelerator, bool(cfg.progress))
    num = holdout_count(len(real), float(train_cfg.calibration.holdout))
    if num == 0:
        raise ValueError(
            f"{cfg.run_dir} was trained without held-out pairs (calibration.holdout=0): every "
            "real pair was seen by D. Retrain with calibration.holdout=0.1 to use joint_scales=auto"
        )
    calibrate_run(train_cfg, run.bases, real, num, Path(cfg.run_dir) / WEIGHTS_FILE, device)


if __name__ == "__main__":
    main()
