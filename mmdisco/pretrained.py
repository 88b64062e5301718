"""Where pretrained weights come from: THE resolver of a local directory or a hub id.

``pretrained: assets/synthetic/audio`` (relative paths are also tried from the repository
root, so configs work from any working directory), an absolute directory, or a hub id such as
``cvssp/audioldm-m-full`` (downloaded, or read from the local cache with HF_HUB_OFFLINE=1).
A missing or incomplete directory gives one FileNotFoundError listing every expected file and
where to get them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
REPO_ROOT = Path(__file__).resolve().parents[1]


def local_path(path: str | Path) -> Path:
    """``path``; a relative path that does not exist from the working directory but does from
    the repository root is taken from there (``assets/...`` works from a notebook's folder)."""
    path = Path(path)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    return path


def _describe(req: str | tuple[str, ...]) -> str:
    return req if isinstance(req, str) else " or ".join(req[:2])


def _missing(path: Path, required: Iterable[str | tuple[str, ...]]) -> list[str]:
    out = []
    for req in required:
        options = (req,) if isinstance(req, str) else req
        if not any((path / f).exists() for f in options):
            out.append(_describe(req))
    return out


def _download(repo_id: str, required: list[str | tuple[str, ...]]) -> Path:
    """Fetch only the needed files of a hub repo (no fp16 / .ckpt duplicates); honours
    HF_HUB_OFFLINE (then only the local cache is used)."""
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    folders = {Path(_describe(r).split(" or ")[0]).parent.as_posix() for r in required}
    allow = []
    for folder in folders:
        prefix = "" if folder == "." else f"{folder}/"
        allow += [f"{prefix}*.json", f"{prefix}*.txt", f"{prefix}*.safetensors"]
    ignore = ["*.fp16.*", "*non_ema*", "*.ckpt"]
    root = Path(
        snapshot_download(
            repo_id, allow_patterns=allow, ignore_patterns=ignore, local_files_only=offline
        )
    )
    if _missing(root, required) and not offline:  # some repos only ship .bin weights
        allow = [p.replace("*.safetensors", "*.bin") for p in allow if p.endswith("safetensors")]
        root = Path(snapshot_download(repo_id, allow_patterns=allow, ignore_patterns=ignore))
    return root


def resolve_pretrained(
    source: str | Path, required: Iterable[str | tuple[str, ...]], hint: str
) -> Path:
    """A local directory (relative paths are also tried from the repo root) or a hub id,
    returned as a local directory holding every ``required`` file, else one
    FileNotFoundError listing the expected files and ``hint`` (where to get them)."""
    required = list(required)
    path = local_path(source)
    expected = ", ".join(_describe(r) for r in required)
    if not path.exists() and HUB_ID.match(str(source)):
        try:
            path = _download(str(source), required)
        except Exception as err:  # offline without a cache, unknown repo, no network
            raise FileNotFoundError(
                f"could not get {source!r} from the Hugging Face hub or its local cache "
                f"({type(err).__name__}). Expected files: {expected}. {hint}"
            ) from err
    missing = _missing(path, required)
    if not path.is_dir() or missing:
        what = "does not exist" if not path.is_dir() else f"lacks {', '.join(missing)}"
        raise FileNotFoundError(
            f"pretrained directory {path} {what}. Expected files: {expected}. {hint}"
        )
    return path
