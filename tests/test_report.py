"""The evaluation report: table formats, and report.html opened in headless Chromium (the page
loads without script errors, its chart decodes, each video has a duration)."""

import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from mmdisco.media import write_video_with_audio
from mmdisco.report import format_markdown, format_text, write_outputs

RESULTS = {
    "unguided": {"fvd/videogpt-i3d400": 512.25, "av_align/mmdisco-a10.1": 0.25, "folder": "x"},
    "guided": {"fvd/videogpt-i3d400": 401.5, "av_align/mmdisco-a10.1": float("nan")},
}
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


def test_tables():
    text = format_text(RESULTS).splitlines()
    assert text[0].split() == ["unguided", "guided"]
    assert text[1].split() == ["fvd/videogpt-i3d400", "512.2", "401.5"]
    assert text[2].split() == ["av_align/mmdisco-a10.1", "0.25", "-"]  # NaN shows as "-"
    md = format_markdown(RESULTS).splitlines()
    assert md[0] == "| metric | unguided | guided |" and md[1] == "|---|---|---|"
    assert md[2] == "| fvd/videogpt-i3d400 | 512.2 | 401.5 |"


def _clips(root, names, seed):
    rng = np.random.default_rng(seed)
    for name in names:
        frames = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
        audio = (0.1 * rng.standard_normal(16_000)).astype(np.float32)
        write_video_with_audio(root / name, frames, 8, audio, 16_000)  # lossless yuv444p


@pytest.fixture()
def report(tmp_path):
    folders = {d: tmp_path / d for d in ("unguided", "guided")}
    _clips(folders["unguided"], ["00000.mp4", "00001.mp4", "00002.mp4"], 0)
    _clips(folders["guided"], ["00000.mp4", "00001.mp4"], 1)  # only common names are paired
    return write_outputs(tmp_path, RESULTS, folders)


def test_outputs_are_written_and_self_contained(report):
    saved = json.loads(report["json"].read_text().replace("NaN", "null"))
    assert saved["unguided"] == {"fvd/videogpt-i3d400": 512.25, "av_align/mmdisco-a10.1": 0.25}
    assert report["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = report["report"].read_text()
    assert "http://" not in page and "https://" not in page  # nothing fetched from a network
    assert page.count("<video") == 4 and page.count("data:video/mp4;base64,") == 4
    assert "data:image/png;base64," in page and "00002.mp4" not in page


class _Attrs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_report_in_headless_chromium(report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (.ci/run installs the Debian package)")
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=10000", "--dump-dom", report["report"].as_uri()]  # fmt: skip
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    parser = _Attrs()
    parser.feed(dom)
    body = next(a for t, a in parser.tags if t == "body")
    assert body.get("data-loaded") == "1" and body.get("data-errors") == "", body
    images = [a for t, a in parser.tags if t == "img"]
    assert len(images) == 1 and int(images[0]["data-width"]) > 0  # the chart decoded
    videos = [a for t, a in parser.tags if t == "video"]
    assert len(videos) == 4
    for v in videos:
        assert "data-error" not in v and int(v["data-frame-width"]) == 128  # decoded, upscaled
        assert float(v["data-duration"]) == pytest.approx(1.0, abs=0.1)  # 8 frames at 8 fps
