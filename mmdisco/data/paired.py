"""Paired audio-video data sets read from mp4 files with their sound.

:class:`SyntheticPairs` is the synthetic world of issue 5 (``mmdisco.data.synthetic``) seen
as a paired data set: it generates the mp4s + metadata.csv when they are missing, reads every
listed clip back with ``mmdisco.media``, and encodes it with the base models' own codecs, so
the discriminator is trained on exactly the latents the bases generate in.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mmdisco.data.folder import PairedVideoFolder
from mmdisco.data.synthetic import (
    CLIP_SECONDS,
    FPS,
    FRAME_SIZE,
    NUM_FRAMES,
    NUM_SAMPLES,
    SAMPLE_RATE,
    generate_dataset,
)
from mmdisco.faults import discard_csv_if_damaged, read_csv_rows
from mmdisco.media import MediaError, read_video_with_audio

log = logging.getLogger(__name__)


def read_metadata(csv_path: str | os.PathLike) -> list[dict]:
    """Rows of a paired data set's metadata.csv (columns: file, caption, onset, ...)."""
    return read_csv_rows(csv_path)[0]  # a torn file: CorruptFileError naming it


def read_clip(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(frames (8, 32, 32, 3) uint8, audio (16000,) float32) of one synthetic clip.

    Raises MediaError (with the path and the reason) when it cannot be read or has the
    wrong shape.
    """
    frames, _, audio, _ = read_video_with_audio(path, sample_rate=SAMPLE_RATE, mono=True)
    expected = (NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 3)
    if frames.shape != expected or audio.shape != (NUM_SAMPLES,):
        raise MediaError(
            path,
            f"frames {frames.shape} / audio {audio.shape}, expected {expected} / ({NUM_SAMPLES},)",
        )
    return frames, audio


class SyntheticPairs:
    """The synthetic world as a paired data set (``data=synthetic``).

    ``data_dir`` holds the mp4s and metadata.csv; when it lists fewer than ``num_clips`` clips
    they are generated (deterministic in ``seed``, see ``generate_dataset``). Unreadable clips
    are skipped, logged with their path and reason, and kept in ``skipped``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike = ".cache/mmdisco/synthetic_data",
        num_clips: int = 1000,
        seed: int = 0,
        name: str = "synthetic",
        batch_size: int = 256,
        progress: bool = True,
    ):
        if num_clips < 1:
            raise ValueError(f"data.num_clips must be >= 1, got {num_clips}")
        self.data_dir = Path(data_dir)
        self.num_clips, self.seed, self.name = num_clips, seed, name
        self.batch_size, self.progress = batch_size, progress
        self.skipped: list[tuple[Path, str]] = []
        self._folder: PairedVideoFolder | None = None

    # -- the files ---------------------------------------------------------------------
    @property
    def csv_path(self) -> Path:
        return self.data_dir / "metadata.csv"

    def ensure_generated(self) -> Path:
        """Generate the data set (or extend it to ``num_clips``) unless it is there already."""
        discard_csv_if_damaged(self.csv_path)  # torn from outside: written again below
        if not self.csv_path.exists() or len(read_metadata(self.csv_path)) < self.num_clips:
            log.info("generating %d synthetic clips in %s", self.num_clips, self.data_dir)
            generate_dataset(self.data_dir, self.num_clips, self.seed, progress=self.progress)
        return self.csv_path

    def rows(self) -> list[dict]:
        """The first ``num_clips`` rows of metadata.csv (generated first when missing)."""
        return read_metadata(self.ensure_generated())[: self.num_clips]

    def load_media(self) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """(frames (N, 8, 32, 32, 3) uint8, audio (N, 16000) float32, their rows): every
        readable clip; the others are skipped and counted in ``skipped``."""
        frames, audio, kept = [], [], []
        self.skipped = []
        for row in tqdm(self.rows(), desc="read clips", disable=not self.progress):
            path = self.data_dir / row["file"]
            try:
                f, a = read_clip(path)
            except MediaError as e:
                log.warning("skipping %s: %s", e.path, e.reason)
                self.skipped.append((e.path, e.reason))
                continue
            frames.append(f)
            audio.append(a)
            kept.append(row)
        if self.skipped:
            log.warning(
                "skipped %d of %d clips in %s", len(self.skipped), self.num_clips, self.data_dir
            )
        if not kept:
            raise RuntimeError(f"no readable clip in {self.data_dir} ({len(self.skipped)} skipped)")
        return np.stack(frames), np.stack(audio), kept

    # -- the PairedVideoFolder interface (Dataset of decoded clips, for the latent cache) ----
    def folder(self) -> PairedVideoFolder:
        """The first ``num_clips`` clips as a :class:`PairedVideoFolder` (generated first when
        missing): 1.0 s windows, 8 fps, 32x32, 16 kHz mono, caption = class name."""
        if self._folder is None:
            self._folder = PairedVideoFolder(
                root=self.data_dir,
                csv=self.ensure_generated(),
                duration=CLIP_SECONDS,
                fps=FPS,
                size=FRAME_SIZE,
                sample_rate=SAMPLE_RATE,
                path_column="file",
                caption_column="caption",
                max_clips=self.num_clips,
                name=self.name,
            )
        return self._folder

    def __len__(self) -> int:
        return len(self.folder())

    def __bool__(self) -> bool:  # truthiness must not generate the data set (via __len__)
        return True

    def __getitem__(self, index: int):
        return self.folder()[index]

    def for_media_format(self, fmt) -> PairedVideoFolder:
        """The synthetic bases fix no size: the world's are used, and checked against any
        the bases do fix."""
        return self.folder().for_media_format(fmt)

    def cache_key(self) -> dict:
        return {**self.folder().cache_key(), "seed": self.seed}

    @property
    def captions(self) -> list[str]:
        return self.folder().captions

    def note_skipped(self, records) -> None:
        self.folder().note_skipped(records)

    def summary(self) -> dict:
        return self.folder().summary()

    def report(self) -> dict:
        return self.folder().report()
