"""Figures: toy scatter over target-density contours, training curves, accuracy by t."""

from __future__ import annotations

import csv
import math

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


TRAIN_KEYS = ("loss", "l_d", "l_dsm", "l_nce", "l_pbce", "acc_real", "acc_fake", "acc_nce")


def training_curves(csv_path, png_path, keys=TRAIN_KEYS):
    """Losses, accuracies and (when logged) the residual-to-base-noise norm ratio per modality
    (``res_ratio_{m}`` of train_log.csv: how strongly D's guidance acts at scale 1). A column that
    is absent, or never finite and non-zero (a term the loss does not have), is left out."""
    rows = list(csv.DictReader(open(csv_path)))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]

    def series(k):
        values = [float(r[k]) for r in rows]
        return values if any(math.isfinite(v) and v != 0 for v in values) else None

    curves = {k: v for k in keys if k in rows[0] and (v := series(k)) is not None}
    ratios = {
        k: v for k in rows[0] if k.startswith("res_ratio_") and (v := series(k)) is not None
    }
    fig, axes = plt.subplots(1, 3 if ratios else 2, figsize=(13.5 if ratios else 9, 3.2))
    for k, v in curves.items():
        ax = axes[1] if k.startswith("acc") else axes[0]
        ax.plot(steps, v, label=k)
    for k, v in ratios.items():
        axes[2].plot(steps, v, label=k.replace("res_ratio_", ""))
    if ratios:
        axes[2].set_title("||residual|| / ||base eps|| (scale 1)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def accuracy_by_t(csv_path, png_path):
    """D's accuracy on real and on fake pairs per bucket of diffusion steps t (columns
    ``acc_real_t{lo}-{hi}`` / ``acc_fake_t{lo}-{hi}`` of train_log.csv) over training."""
    rows = list(csv.DictReader(open(csv_path)))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for ax, name in zip(axes, ("real", "fake")):
        cols = [k for k in rows[0] if k.startswith(f"acc_{name}_t")]
        for k, color in zip(cols, plt.cm.viridis(np.linspace(0, 0.9, max(len(cols), 1)))):
            ax.plot(steps, [float(r[k]) for r in rows], color=color, label=k[len(f"acc_{name}_") :])
        ax.set(xlabel="step", title=f"accuracy on {name} pairs", ylim=(-0.02, 1.02))
        ax.legend(fontsize=7, title="t", title_fontsize=7)
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


def media_pairs(path, rows: list[tuple[str, str]], max_frames: int = 8, n_fft: int = 512):
    """One row per (label, mp4 path): its first ``max_frames`` frames, then the log-magnitude
    spectrogram (Hann window ``n_fft``, hop n_fft / 4) of its sound, read back from the file."""
    from mmdisco.media import read_video_with_audio

    fig, axes = plt.subplots(
        len(rows), max_frames + 1, figsize=(1.1 * max_frames + 3.2, 1.35 * len(rows)),
        gridspec_kw={"width_ratios": [1] * max_frames + [3]}, squeeze=False,
    )  # fmt: skip
    for (label, mp4), ax_row in zip(rows, axes):
        frames, fps, audio, sr = read_video_with_audio(mp4, mono=True)
        for i, ax in enumerate(ax_row[:max_frames]):
            ax.set_axis_off()
            if i < len(frames):
                ax.imshow(frames[i])
                ax.set_title(f"{i / fps:.3f} s", fontsize=6)
        window = torch.hann_window(n_fft)
        spec = torch.stft(torch.from_numpy(audio), n_fft, n_fft // 4, window=window,
                          return_complex=True).abs()  # fmt: skip
        ax = ax_row[-1]
        ax.imshow(
            (spec + 1e-3).log10().numpy(), origin="lower", aspect="auto", cmap="magma",
            extent=(0, len(audio) / sr, 0, sr / 2000),
        )  # fmt: skip
        ax.set_ylim(0, 2.0)
        ax.set_ylabel("kHz", fontsize=7)
        ax.tick_params(labelsize=6)
        ax_row[0].text(-0.15, 0.5, label, transform=ax_row[0].transAxes, ha="right",
                       va="center", fontsize=8)  # fmt: skip
    axes[-1, -1].set_xlabel("time (s)", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
