"""Training logs: per-interval meters (device sums, all-reduced once per row), ``train_log.csv``
and TensorBoard events, both cut back to the resumed step."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import Tensor

from mmdisco.bases.protocol import MODALITIES


class Meter:
    """Sums of the logged quantities over a log interval on this process (device tensors, no
    host sync per step); :meth:`result` all-reduces them and returns one row."""

    def __init__(self, num_t: int, buckets: int, device):
        self.num_t, self.buckets, self.device = num_t, buckets, device
        self.bounds = [
            (k * num_t // buckets, (k + 1) * num_t // buckets - 1) for k in range(buckets)
        ]
        self.reset()

    def reset(self) -> None:
        z = lambda n=1: torch.zeros(n, dtype=torch.float64, device=self.device)  # noqa: E731
        self.sums = {
            "steps": z(), "loss": z(), "l_d": z(), "l_dsm": z(),
            "real_ok": z(self.buckets), "real_n": z(self.buckets),
            "fake_ok": z(self.buckets), "fake_n": z(self.buckets),
            "res_pairs": z(), "grad_norm": z(),
            **{f"{k}_{m}": z() for k in ("res_norm", "eps_norm") for m in MODALITIES},
        }  # fmt: skip

    def _by_bucket(self, name: str, t: Tensor, ok: Tensor) -> None:
        b = (t.long() * self.buckets // self.num_t).clamp(0, self.buckets - 1)
        self.sums[f"{name}_ok"] += torch.bincount(b, ok.double(), self.buckets)
        self.sums[f"{name}_n"] += torch.bincount(b, minlength=self.buckets).double()

    @torch.no_grad()
    def add(self, terms: dict[str, Tensor], grad_norm: Tensor) -> None:
        s = self.sums
        s["steps"] += 1
        for k in ("loss", "l_d", "l_dsm"):
            s[k] += terms[k].detach().double()
        s["grad_norm"] += grad_norm.detach().double()
        for k in ("l_nce", "acc_nce", "l_pbce"):  # with loss.contrastive (same on every process)
            if k in terms:
                s[k] = s.get(k, torch.zeros_like(s["loss"])) + terms[k].detach().double()
        self._by_bucket("real", terms["t_real"], terms["logit_real"] > 0)
        self._by_bucket("fake", terms["t_fake"], terms["logit_fake"] < 0)
        if "res_norm_audio" in terms:
            s["res_pairs"] += terms["res_norm_audio"].numel()
            for m in MODALITIES:
                s[f"res_norm_{m}"] += terms[f"res_norm_{m}"].double().sum()
                s[f"eps_norm_{m}"] += terms[f"eps_norm_{m}"].double().sum()

    def result(self, accelerator: Accelerator) -> dict[str, float]:
        names = list(self.sums)
        flat = torch.cat([self.sums[k] for k in names])
        flat = accelerator.reduce(flat, reduction="sum").cpu()
        sizes = [self.sums[k].numel() for k in names]
        s = dict(zip(names, torch.split(flat, sizes)))
        per_step = s["steps"].item() or math.nan  # steps x processes (none: all skipped)
        keys = ("loss", "l_d", "l_dsm", "l_nce", "acc_nce", "l_pbce")
        row = {k: s[k].item() / per_step for k in keys if k in s}
        for name in ("real", "fake"):
            row[f"acc_{name}"] = s[f"{name}_ok"].sum().item() / max(s[f"{name}_n"].sum().item(), 1)
        for name in ("real", "fake"):
            for (lo, hi), ok, n in zip(self.bounds, s[f"{name}_ok"], s[f"{name}_n"]):
                row[f"acc_{name}_t{lo}-{hi}"] = ok.item() / n.item() if n > 0 else math.nan
        pairs = s["res_pairs"].item()
        for m in MODALITIES:
            r, e = s[f"res_norm_{m}"].item(), s[f"eps_norm_{m}"].item()
            row[f"res_norm_{m}"] = r / pairs if pairs else math.nan
            row[f"eps_norm_{m}"] = e / pairs if pairs else math.nan
            row[f"res_ratio_{m}"] = r / e if pairs and e > 0 else math.nan
        row["grad_norm"] = s["grad_norm"].item() / per_step
        self.reset()
        return row


class Logs:
    """``train_log.csv`` and TensorBoard events in the run directory (main process only).

    On resume from step s, CSV rows after s (written after the last checkpoint) are dropped and
    TensorBoard purges its events after s, so both read like one uninterrupted run.
    """

    def __init__(self, run_dir: Path, start: int, tensorboard: bool):
        self.csv_path = run_dir / "train_log.csv"
        _truncate_csv(self.csv_path, start)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(run_dir / "tensorboard", purge_step=start or None)

    def write(self, step: int, row: dict[str, float]) -> None:
        row = {"step": step, **row}
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.writer is not None:
            for k, v in row.items():
                if k != "step" and not math.isnan(v):
                    self.writer.add_scalar(_tb_tag(k), v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _tb_tag(key: str) -> str:
    if key.startswith(("acc_real_t", "acc_fake_t")):
        return f"acc_by_t/{key[4:]}"
    if key.startswith(("res_", "eps_")):
        return f"residual/{key}"
    if key.startswith(("loss", "l_d", "acc_")):
        return f"loss/{key}"
    return f"train/{key}"


def _truncate_csv(path: Path, step: int) -> None:
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if int(r["step"]) <= step]
    if len(keep) == len(rows):
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
