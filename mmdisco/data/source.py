"""What the pair store reads from a data set: the declared interface of a *pair source*.

Implemented by :class:`~mmdisco.data.folder.PairedVideoFolder` (and the presets over it),
:class:`~mmdisco.data.paired.SyntheticPairs` and :class:`~mmdisco.data.toy.ToyPairs`. Data
sets know nothing of the bases: the store (``mmdisco.pairs.real``) hands them the bases'
declared media format and encodes what they return.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class PairSource(Protocol):
    name: str

    @property
    def captions(self) -> list[str]:
        """One caption per listed sample ([] when the data set has none)."""
        ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any:
        """``{"audio", "video", "caption", "path", "index"}`` (media or data-space samples) or
        a ``Skipped`` record (see ``mmdisco.data.folder.collate_clips``)."""
        ...

    def for_media_format(self, fmt: Mapping[str, Any]) -> Any:
        """Take the clip format the bases declare (``JointBase.media_format()``)."""
        ...

    def cache_key(self) -> dict[str, Any]:
        """Everything a sample depends on (hashed into the store's name)."""
        ...

    def note_skipped(self, records) -> None: ...

    def report(self) -> dict[str, Any]: ...
