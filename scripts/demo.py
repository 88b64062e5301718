"""`make demo`: the library's main job on the embedded synthetic world, end to end.

Goes through the same public scripts, configs, wrappers, discriminator, loss and sampler as the
real models (``experiment=synthetic`` = ``base=synthetic data=synthetic
discriminator=synthetic sampler=ddim``):

1. ``train.py``: the paired data set (generated on first use: 1000 mp4s with sound), the two
   shipped base models (``assets/synthetic``, trained on one modality each by
   ``scripts/train_base.py``), fake pairs pre-sampled from them, discriminator training;
2. ``sample.py`` twice: N pairs without and with the discriminator, from the same seeds, as
   mp4s with sound in ``outputs/demo/unguided/`` and ``outputs/demo/guided/`` (the same file
   name = the same initial noise);
3. ``evaluate.py``: decodes class and onset from each mp4's frames and sound alone and prints
   validity, semantic / temporal agreement and AV-Align, unguided vs guided; writes the table
   (``evaluation.md`` / ``.json``), the bar chart ``evaluation.png`` and ``report.html``;
4. ``outputs/demo/pairs.png``: frames + spectrogram of the first unguided and guided pairs.

    python scripts/demo.py [num_samples=64] [extra train.py overrides, e.g. train.steps=300]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "outputs" / "demo"


def run(script: str, *args: str) -> None:
    cmd = [sys.executable, str(ROOT / "scripts" / script), *args]
    print("+", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main(argv: list[str]) -> None:
    start = time.time()
    num = next((a.split("=", 1)[1] for a in argv if a.startswith("num_samples=")), "64")
    extra = [a for a in argv if not a.startswith("num_samples=")]
    stamps = {}
    run("train.py", "experiment=synthetic", f"run_dir={RUN}", *extra)
    stamps["train"] = time.time()
    sampling = {}
    for guided in ("false", "true"):
        t0 = time.time()
        run("sample.py", f"run_dir={RUN}", f"guided={guided}", f"num_samples={num}",
            f"batch_size={num}")  # fmt: skip
        sampling[guided] = time.time() - t0  # each includes the process start and mp4 writing
    stamps["sample"] = time.time()
    run("evaluate.py", f"run_dir={RUN}", "samples=[unguided,guided]", "+options.av_align=true")
    stamps["evaluate"] = time.time()

    from mmdisco.plots import media_pairs

    name = "00000.mp4"
    media_pairs(RUN / "pairs.png", [(d, str(RUN / d / name)) for d in ("unguided", "guided")])
    t0, times = start, []
    for stage, t in stamps.items():
        times.append(f"{stage} {t - t0:.0f} s")
        t0 = t
    print(f"\ndemo done in {time.time() - start:.0f} s ({', '.join(times)}); "
          f"clips in {RUN}/unguided and {RUN}/guided, figure {RUN / 'pairs.png'}")  # fmt: skip
    print(f"sampling: unguided {sampling['false']:.0f} s, guided {sampling['true']:.0f} s, "
          f"guided / unguided {sampling['true'] / sampling['false']:.2f}x")  # fmt: skip
    print(f"report: {RUN / 'report.html'}")


if __name__ == "__main__":
    main(sys.argv[1:])
