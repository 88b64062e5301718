"""The evaluation's outputs: one table (text, markdown, JSON), a bar chart, report.html.

``report.html`` is self-contained (no network): the metric table, the bar chart as an inline
base64 PNG, and side-by-side ``<video>`` players (with sound) of the same seed's clip from each
sample set (e.g. unguided | guided), embedded as base64 data URIs: re-encoded to H.264 yuv420p
(even size, upscaled so the short side is at least 128 px) + AAC, since browsers do not play
the lossless yuv444p our samples are written in. A small script writes each
video's duration into its ``data-duration`` attribute once its metadata has loaded (what the
headless-browser test reads back).
"""

from __future__ import annotations

import base64
import html
import math
import os
import shutil
import tempfile
from pathlib import Path

from mmdisco.io import atomic_write_bytes, atomic_write_json

NOT_PLOTTED = ("num_clips", "unreadable")  # bookkeeping counts: in the table, not the chart


def scalar_keys(results: dict[str, dict]) -> list[str]:
    """Metric names with a number in any result, in first-seen order."""
    keys: list[str] = []
    for r in results.values():
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in keys:
                keys.append(k)
    return keys


def _cell(v) -> str:
    missing = v is None or isinstance(v, bool) or (isinstance(v, float) and math.isnan(v))
    return "-" if missing else f"{v:.4g}"


def format_text(results: dict[str, dict]) -> str:
    """One row per metric, one column per sample set."""
    keys = scalar_keys(results)
    width = max([len(k) for k in keys] + [6]) + 2
    col = max([len(n) for n in results] + [12]) + 2
    lines = [" " * width + "".join(f"{n:>{col}}" for n in results)]
    for k in keys:
        lines.append(
            f"{k:<{width}}" + "".join(f"{_cell(r.get(k)):>{col}}" for r in results.values())
        )
    return "\n".join(lines)


def format_markdown(results: dict[str, dict]) -> str:
    names = list(results)
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for k in scalar_keys(results):
        lines.append(f"| {k} | " + " | ".join(_cell(results[n].get(k)) for n in names) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(path: str | os.PathLike, results: dict[str, dict]) -> Path:
    """One panel per metric, one bar per sample set (e.g. unguided vs guided)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in scalar_keys(results) if k not in NOT_PLOTTED]
    names = list(results)
    cols = min(4, max(1, len(keys)))
    rows = math.ceil(len(keys) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes.flat, keys):
        values = [results[n].get(key) for n in names]
        values = [float("nan") if _cell(v) == "-" else float(v) for v in values]
        ax.bar(range(len(names)), values, color=colors[: len(names)])
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def browser_mp4(path: Path, tmp_dir: Path, min_side: int = 128) -> bytes:
    """The clip re-encoded so that browsers play it: yuv420p, even size, nearest upscaling."""
    import numpy as np

    from mmdisco.media import read_video_with_audio, write_video_with_audio

    frames, fps, audio, sr = read_video_with_audio(path)
    scale = max(1, math.ceil(min_side / min(frames.shape[1:3])))
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
    out = tmp_dir / f"{path.parent.name}-{path.name}"
    write_video_with_audio(out, np.ascontiguousarray(frames), fps, audio, sr, crf=18,
                           pix_fmt="yuv420p")  # fmt: skip
    return out.read_bytes()


# in <head>: records script errors before anything else runs
_ERRORS = """
window.jsErrors = [];
window.addEventListener('error', (e) => { window.jsErrors.push(String(e.message)); });
"""
_SCRIPT = """
for (const v of document.querySelectorAll('video')) {
  const mark = () => { v.dataset.duration = v.duration; };
  if (v.readyState >= 1) mark(); else v.addEventListener('loadedmetadata', mark);
  v.addEventListener('loadeddata', () => { v.dataset.frameWidth = v.videoWidth; });
  v.addEventListener('error', () => { v.dataset.error = String(v.error && v.error.code); });
}
window.addEventListener('load', () => {
  for (const img of document.images) img.dataset.width = img.naturalWidth;
  document.body.dataset.loaded = '1';
  document.body.dataset.errors = window.jsErrors.join('; ');
});
"""


def write_report(
    path: str | os.PathLike,
    results: dict[str, dict],
    chart: str | os.PathLike | None = None,
    folders: dict[str, str | os.PathLike] | None = None,
    max_pairs: int = 8,
    title: str = "MMDisCo evaluation",
) -> Path:
    """report.html: table, chart and side-by-side players of the same file name per folder."""
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><script>{_ERRORS}</script><style>",
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}",
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}",
        "td:first-child{text-align:left}.pairs{display:flex;flex-wrap:wrap;gap:1.5em}",
        ".pair{display:flex;gap:.5em;padding:.5em;border:1px solid #ddd}",
        "figure{margin:0}video{width:192px;image-rendering:pixelated;background:#000}",
        "img{max-width:100%}",
        "</style></head><body>",
        f"<h1>{esc(title)}</h1><h2>Metrics</h2><table><tr><th>metric</th>",
        *[f"<th>{esc(n)}</th>" for n in results],
        "</tr>",
    ]
    for k in scalar_keys(results):
        cells = "".join(f"<td>{_cell(r.get(k))}</td>" for r in results.values())
        parts.append(f"<tr><td>{esc(k)}</td>{cells}</tr>")
    parts.append("</table>")
    folders = {n: Path(f) for n, f in (folders or {}).items() if Path(f).is_dir()}
    if folders:
        names = sorted(
            set.intersection(*[{p.name for p in f.glob("*.mp4")} for f in folders.values()])
        )
        parts.append(
            f"<h2>Same seed, side by side ({min(len(names), max_pairs)} of {len(names)})</h2>"
        )
        tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=Path(path).parent))
        parts.append("<div class='pairs'>")
        for name in names[:max_pairs]:
            parts.append(f"<div class='pair'><b>{esc(name)}</b>")
            for label, folder in folders.items():
                uri = _data_uri(browser_mp4(folder / name, tmp), "video/mp4")
                parts.append(
                    f"<figure><video controls preload='auto' src='{uri}'></video>"
                    f"<figcaption>{esc(label)}</figcaption></figure>"
                )
            parts.append("</div>")
        parts.append("</div>")
        shutil.rmtree(tmp, ignore_errors=True)
    if chart is not None and Path(chart).exists():
        uri = _data_uri(Path(chart).read_bytes(), "image/png")
        parts.append(f"<h2>Per metric</h2><img alt='bar chart' src='{uri}'>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    atomic_write_bytes(path, "\n".join(parts).encode())
    return Path(path)


def write_outputs(
    out_dir: str | os.PathLike, results: dict[str, dict], folders=None, max_pairs: int = 8
) -> dict:
    """evaluation.md / .json / .png and report.html in out_dir; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scalars = {n: {k: r[k] for k in scalar_keys({n: r}) if k in r} for n, r in results.items()}
    paths = {
        "markdown": out_dir / "evaluation.md",
        "json": out_dir / "evaluation.json",
        "chart": out_dir / "evaluation.png",
        "report": out_dir / "report.html",
    }
    atomic_write_bytes(paths["markdown"], format_markdown(scalars).encode())
    atomic_write_json(paths["json"], scalars)
    bar_chart(paths["chart"], scalars)
    write_report(paths["report"], scalars, paths["chart"], folders, max_pairs)
    return paths
