"""Run one of ``scripts/`` in a subprocess from the repository root, as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def script(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python scripts/<name> *args``; with ``check`` a non-zero exit fails the test and shows
    the script's output."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *args],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc
