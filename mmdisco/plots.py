"""Figures: toy scatter over target-density contours, training curves."""

from __future__ import annotations

import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def toy_scatter(path, samples: np.ndarray, target=None, title: str = "", lim: float = 4.0):
    """Samples (N, 2) over the contours of the target mixture's log density."""
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    if target is not None:
        g = np.linspace(-lim, lim, 300)
        xx, yy = np.meshgrid(g, g)
        pts = torch.tensor(np.stack([xx.ravel(), yy.ravel()], 1))
        logp = target.log_prob(pts).numpy().reshape(xx.shape)
        ax.contour(xx, yy, np.maximum(logp, -20), levels=8, cmap="Greys", linewidths=0.6)
    ax.scatter(samples[:, 0], samples[:, 1], s=1.5, alpha=0.4, color="tab:blue")
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="a (audio)", ylabel="v (video)", title=title)
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def training_curves(csv_path, png_path, keys=("loss", "l_d", "l_dsm", "acc_real", "acc_fake")):
    rows = list(csv.DictReader(open(csv_path)))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for k in keys:
        if k in rows[0]:
            ax = axes[1] if k.startswith("acc") else axes[0]
            ax.plot(steps, [float(r[k]) for r in rows], label=k)
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def toy_grid(path, rows: list[list[tuple[str, np.ndarray]]], targets: list, lim: float = 4.0):
    """One row per target, one panel per method: samples (N, 2) over target contours."""
    nr, nc = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nr, nc, figsize=(2.6 * nc, 2.6 * nr), squeeze=False)
    g = np.linspace(-lim, lim, 200)
    xx, yy = np.meshgrid(g, g)
    pts = torch.tensor(np.stack([xx.ravel(), yy.ravel()], 1))
    for r, (row, target) in enumerate(zip(rows, targets)):
        logp = target.log_prob(pts).numpy().reshape(xx.shape)
        for c, (title, samples) in enumerate(row):
            ax = axes[r][c]
            ax.contour(xx, yy, np.maximum(logp, -20), levels=6, cmap="Greys", linewidths=0.5)
            ax.scatter(samples[:, 0], samples[:, 1], s=0.8, alpha=0.35, color="tab:blue")
            ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xticks=[], yticks=[], title=title)
            ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
