"""A paired audio-video data set read from a folder of videos with sound plus a CSV.

Each CSV row names one clip (a path relative to ``root``, or a ``path_format`` over the row's
columns), its caption (a free caption or a class label; or one ``default_caption`` for all)
and optionally a start time in the file. A clip is decoded with PyAV (``mmdisco.media``):
video resampled to ``fps``, short side resized to ``size`` and centre-cropped; audio mixed to
mono and resampled to ``sample_rate``; both cut to [start, start + duration).
:meth:`PairedVideoFolder.for_media_format` takes fps, size and sample rate from the bases.

Bad clips are never fatal. ``__getitem__`` returns a :class:`Skipped` record instead of a
sample when the file is missing, corrupt or unreadable, shorter than the window, or silent
(audio RMS below ``min_rms``); :func:`collate_clips` drops those from a batch and lists them
under ``batch["skipped"]``. The records travel back from DataLoader worker processes that way
(a worker's copy of the data set cannot update the parent's), so whoever iterates hands them to
:meth:`PairedVideoFolder.note_skipped`; ``skipped`` and :meth:`summary` then give the count
and the reasons. (Skipping in ``__getitem__`` rather than in a pre-scan: a scan would decode
every clip twice, and the latent cache decodes each once.)
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from mmdisco.faults import read_csv_rows
from mmdisco.media import MediaError, read_video_with_audio

log = logging.getLogger(__name__)

SKIP_KINDS = ("unreadable", "too_short", "silent")


class Skipped(NamedTuple):
    """A clip left out: its data-set index, path, kind (one of SKIP_KINDS) and the reason."""

    index: int
    path: str
    kind: str
    reason: str


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class PairedVideoFolder(Dataset):
    """Videos with sound + a CSV of (path, caption, start) as a ``torch.utils.data.Dataset``.

    A sample is ``{"video": uint8 (F, H, W, 3), "audio": float32 (N,), "caption": str,
    "path": str, "index": int}`` with F = round(duration * fps), (H, W) = size and
    N = round(duration * sample_rate); or a :class:`Skipped` record (see the module doc).

    Args:
        root: folder the clip paths are relative to.
        csv: the CSV file (absolute, relative to the working directory, or relative to root).
        duration: seconds per clip window.
        fps, size, sample_rate: output frame rate, frame size (int or (H, W)) and audio rate;
            None until :meth:`for_media_format` fills them from the bases.
        path_column / path_format: the column holding the clip path, or a ``str.format``
            template over the row (e.g. ``"{ytid}_{start:0>6}.mp4"``) when no column does.
        caption_column: the caption (or label) column; None uses ``default_caption``.
        start_column: optional column with the window's start (seconds) inside the file;
            None starts every window at ``start``.
        fieldnames: column names for a CSV without a header row (None: the first row).
        keep_list: optional text file, one clip per line (its path, file name or stem), e.g.
            the paper's filtered 60K VGGSound clips; other rows are left out.
        where: optional ``{column: value or [values]}`` row filter (e.g. ``{split: train}``).
        max_clips: keep only the first ``max_clips`` rows (after filtering).
        min_rms: clips whose mono audio RMS is below this are skipped as silent.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        csv: str | os.PathLike,
        duration: float,
        fps: float | None = None,
        size: int | tuple[int, int] | None = None,
        sample_rate: int | None = None,
        path_column: str | None = "path",
        path_format: str | None = None,
        caption_column: str | None = "caption",
        default_caption: str = "",
        start_column: str | None = None,
        start: float = 0.0,
        fieldnames: list[str] | None = None,
        keep_list: str | os.PathLike | None = None,
        where: dict[str, Any] | None = None,
        max_clips: int | None = None,
        min_rms: float = 1e-4,
        name: str = "folder",
    ):
        if duration is None or not float(duration) > 0:
            raise ValueError(f"data.duration must be a positive number of seconds, got {duration}")
        if start < 0:
            raise ValueError(f"data.start must be >= 0, got {start}")
        if (path_column is None) == (path_format is None):
            raise ValueError("set exactly one of data.path_column and data.path_format")
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root {self.root} is not a directory")
        self.csv_path = self._find_csv(csv)
        self.duration, self.start = float(duration), float(start)
        self.fps = None if fps is None else float(fps)
        self.size = _as_size(size)
        self.sample_rate = None if sample_rate is None else int(sample_rate)
        self.path_column, self.path_format = path_column, path_format
        self.caption_column, self.default_caption = caption_column, default_caption
        self.start_column, self.fieldnames = start_column, fieldnames
        self.keep_list = None if keep_list is None else Path(keep_list).expanduser().resolve()
        self.where = {
            k: v if isinstance(v, (list, tuple)) else [v] for k, v in (where or {}).items()
        }
        self.max_clips, self.min_rms, self.name = max_clips, float(min_rms), name
        self.rows = self._load_rows()
        self.skipped: dict[str, Skipped] = {}  # path -> record, filled by note_skipped

    # -- the CSV ---------------------------------------------------------------------------
    def _find_csv(self, csv_file) -> Path:
        path = Path(csv_file).expanduser()
        if not path.is_absolute() and not path.is_file():
            path = self.root / path
        if not path.is_file():
            raise FileNotFoundError(f"data.csv {csv_file} not found (nor under {self.root})")
        return path.resolve()

    def _read_csv(self) -> list[dict[str, str]]:
        rows, columns = read_csv_rows(self.csv_path, self.fieldnames, skipinitialspace=True)
        needed = [c for c in (self.path_column, self.caption_column, self.start_column) if c]
        needed += list(self.where)
        missing = [c for c in needed if c not in columns]
        if missing:
            raise ValueError(
                f"{self.csv_path} lacks column(s) {missing}; it has {columns}. Set data.*_column "
                "(or data.fieldnames for a CSV without a header row)."
            )
        return rows

    def _load_rows(self) -> list[dict[str, Any]]:
        rows = [r for r in self._read_csv() if all(r[k] in v for k, v in self._where_str())]
        if self.keep_list is not None:
            rows = self._apply_keep_list(rows)
        if self.max_clips is not None:
            rows = rows[: self.max_clips]
        if not rows:
            raise ValueError(f"{self.csv_path} lists no clip (after keep_list / where filters)")
        return [self._parse(r, i) for i, r in enumerate(rows)]

    def _where_str(self):
        return [(k, {str(x) for x in v}) for k, v in self.where.items()]

    def _apply_keep_list(self, rows):
        if not self.keep_list.is_file():
            raise FileNotFoundError(f"data.keep_list {self.keep_list} not found")
        keep = {line.strip() for line in self.keep_list.read_text().splitlines() if line.strip()}
        kept = []
        for r in rows:
            rel = self._relative_path(r)
            if {rel, Path(rel).name, Path(rel).stem} & keep:
                kept.append(r)
        return kept

    def _relative_path(self, row) -> str:
        if self.path_format is not None:
            try:
                return self.path_format.format(**{k: v for k, v in row.items() if k})
            except KeyError as e:
                raise ValueError(f"data.path_format names column {e} not in the CSV") from None
        return row[self.path_column]

    def _parse(self, row, i: int) -> dict[str, Any]:
        caption = row[self.caption_column] if self.caption_column else self.default_caption
        start = self.start
        if self.start_column:
            try:
                start = float(row[self.start_column])
            except ValueError:
                raise ValueError(
                    f"{self.csv_path} row {i + 1}: start {row[self.start_column]!r} is not a number"
                ) from None
        return {"path": self._relative_path(row), "caption": caption or "", "start": start}

    # -- configuration from the bases ---------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return max(1, round(self.duration * self._require("fps")))

    @property
    def num_samples(self) -> int:
        return round(self.duration * self._require("sample_rate"))

    def _require(self, attr: str):
        value = getattr(self, attr)
        if value is None:
            raise ValueError(
                f"data.{attr} is not set: set it in the data config or call "
                "data.for_media_format(bases.media_format()) to take it from the bases"
            )
        return value

    def for_media_format(self, fmt: Mapping[str, Any]) -> PairedVideoFolder:
        """Fill fps / size / sample_rate from the bases' declared media format (``JointBase.
        media_format()``: ``fps``, ``height``, ``width``, ``sample_rate``) where the config left
        them None, and check the window against the bases' clip lengths (``num_frames`` /
        ``num_samples``) when they fix them. Returns self."""
        self.fps = _agree("fps", self.fps, _float_or_none(fmt.get("fps")))
        hw = (fmt.get("height"), fmt.get("width"))
        self.size = _agree("size", self.size, None if None in hw else tuple(map(int, hw)))
        self.sample_rate = _agree("sample_rate", self.sample_rate, fmt.get("sample_rate"))
        for what, mine, base in (
            ("frames", self.num_frames, fmt.get("num_frames")),
            ("audio samples", self.num_samples, fmt.get("num_samples")),
        ):
            if base is not None and int(base) != mine:
                raise ValueError(
                    f"data.duration {self.duration} s gives {mine} {what}, but the base model "
                    f"takes {base}: set data.duration to match the bases"
                )
        self._require("size")
        return self

    def cache_key(self) -> dict[str, Any]:
        """Everything a decoded sample depends on (for the latent cache's hash)."""
        return {
            "root": str(self.root),
            "csv": str(self.csv_path),
            "csv_sha256": _sha256(self.csv_path),
            "keep_list_sha256": None if self.keep_list is None else _sha256(self.keep_list),
            "rows": len(self.rows),
            "duration": self.duration,
            "fps": self.fps,
            "size": list(self.size) if self.size else None,
            "sample_rate": self.sample_rate,
            "min_rms": self.min_rms,
            "start": self.start,
            "columns": [self.path_column, self.path_format, self.caption_column, self.start_column],
            "default_caption": self.default_caption,
            "where": self.where,
            "max_clips": self.max_clips,
        }

    @property
    def captions(self) -> list[str]:
        """Every listed clip's caption, in CSV order (unreadable clips included)."""
        return [r["caption"] for r in self.rows]

    # -- the Dataset ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        row = self.rows[index]
        path = self.root / row["path"]
        try:
            frames, audio = self._read(path, row["start"])
        except MediaError as e:
            kind = "too_short" if "empty span" in e.reason else "unreadable"
            return self._skip(index, path, kind, e.reason)
        if frames.shape[0] < self.num_frames:  # the audio follows the video's span
            got = frames.shape[0] / self.fps
            reason = (
                f"shorter than the window: {got:.3f} s from {row['start']} s < {self.duration} s"
            )
            return self._skip(index, path, "too_short", reason)
        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
        if rms < self.min_rms:
            return self._skip(
                index, path, "silent", f"silent: audio RMS {rms:.2e} < {self.min_rms}"
            )
        return {
            "video": torch.from_numpy(frames),  # (F, H, W, 3) uint8
            "audio": torch.from_numpy(audio),  # (N,) float32
            "caption": row["caption"],
            "path": str(path),
            "index": index,
        }

    def _read(self, path: Path, start: float) -> tuple[np.ndarray, np.ndarray]:
        frames, _, audio, _ = read_video_with_audio(
            path,
            fps=self._require("fps"),
            size=self._require("size"),
            sample_rate=self._require("sample_rate"),
            start=start,
            duration=self.duration,
            mono=True,
        )
        # The audio covers the video's span in the file (zero-padded where the audio stream
        # ends early): with all frames present it lacks at most half a frame period, padded.
        audio = np.pad(audio[: self.num_samples], (0, max(0, self.num_samples - len(audio))))
        return np.ascontiguousarray(frames[: self.num_frames]), audio

    def _skip(self, index: int, path: Path, kind: str, reason: str) -> Skipped:
        record = Skipped(index, str(path), kind, reason)
        self.note_skipped([record])  # kept in this process; workers' copies travel via collate
        return record

    # -- the skip report -------------------------------------------------------------------
    def note_skipped(self, records) -> None:
        """Record skipped clips (each logged once with its path and reason)."""
        for r in records:
            r = Skipped(*r)
            if r.path not in self.skipped:
                log.warning("skipping %s: %s", r.path, r.reason)
            self.skipped[r.path] = r

    def summary(self) -> dict[str, Any]:
        """{"clips", "skipped", "reasons": {kind: count}, "files": [(path, reason)]}."""
        kinds = Counter(r.kind for r in self.skipped.values())
        return {
            "clips": len(self.rows),
            "skipped": len(self.skipped),
            "reasons": {k: kinds[k] for k in SKIP_KINDS if kinds[k]},
            "files": [(r.path, r.reason) for r in sorted(self.skipped.values())],
        }

    def report(self) -> dict[str, Any]:
        """Log and return :meth:`summary` (call it after a pass over the data)."""
        s = self.summary()
        if s["skipped"]:
            log.warning(
                "%s: skipped %d of %d clips (%s)",
                self.name,
                s["skipped"],
                s["clips"],
                ", ".join(f"{k}: {n}" for k, n in s["reasons"].items()),
            )
        else:
            log.info("%s: all %d clips readable", self.name, s["clips"])
        return s


def collate_clips(items: list[dict[str, Any] | Skipped]) -> dict[str, Any]:
    """Stack samples into {"video": (B, F, H, W, 3) uint8, "audio": (B, N) float32,
    "caption": [str], "path": [str], "index": (B,) long, "skipped": [Skipped]}; Skipped
    records are dropped from the batch (B may be 0: then "video" and "audio" are None)."""
    kept = [x for x in items if not isinstance(x, Skipped)]
    skipped = [x for x in items if isinstance(x, Skipped)]
    return {
        "video": torch.stack([x["video"] for x in kept]) if kept else None,
        "audio": torch.stack([x["audio"] for x in kept]) if kept else None,
        "caption": [x["caption"] for x in kept],
        "path": [x["path"] for x in kept],
        "index": torch.tensor([x["index"] for x in kept], dtype=torch.long),
        "skipped": skipped,
    }


def _as_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"data.size must be an int or (H, W), got {size}")
    return size


def _float_or_none(x):
    return None if x is None else float(x)


def _agree(name: str, mine, theirs):
    """The configured value, else the bases'; both set and different is an error."""
    if mine is None:
        return theirs
    if theirs is not None and mine != theirs:
        raise ValueError(f"data.{name}={mine} differs from the base model's {theirs}")
    return mine
