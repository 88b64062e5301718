"""Run one of ``scripts/`` (or ``-c CODE``) in a child process with a fault injected, and kill it.

    python tests/fault_child.py FAULT SCRIPT ARGS...

FAULT (several joined with ``+``):

- ``none``
- ``stall:GLOB:K``  the K-th (1-based) rename onto a file or directory whose name matches GLOB
  (``os.replace`` / ``os.rename`` / ``Path.rename``: every atomic writer ends with one) stops
  there, its temporary file cut to half its bytes: the state of a kill in the middle of writing
  that file. The child then touches ``$FAULT_FLAG`` and sleeps until killed.
- ``nan:TERM:K``  JointLoss's K-th call (0-based: training step K + 1) returns TERM (``l_d`` or
  ``l_dsm``) times NaN, and the loss built from it, so the NaN also reaches the gradient.

The parent side: :func:`run` (one run, checked) and :func:`kill_at_stall` (start, wait for the
stall, SIGKILL). Both start fresh processes with one environment, so an uninterrupted reference
and the interrupted + resumed run share their CPU kernels' setup (see tests/test_fakes.py).
"""

from __future__ import annotations

import fnmatch
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


# -- child side ---------------------------------------------------------------------------------
def _stall(src, flag: str | None) -> None:
    src = Path(src)
    if src.is_file():  # a write in progress: half of its bytes are there
        with open(src, "r+b") as f:
            f.truncate(src.stat().st_size // 2)
    if flag:
        Path(flag).touch()
    while True:
        time.sleep(60)


def _patch_renames(glob: str, on_match) -> None:
    count = [0]

    def wrap(rename):
        def renamed(src, dst, *args, **kwargs):
            if fnmatch.fnmatch(Path(dst).name, glob):
                count[0] += 1
                on_match(src, count[0])
            return rename(src, dst, *args, **kwargs)

        return renamed

    os.replace, os.rename = wrap(os.replace), wrap(os.rename)  # Path.rename calls os.rename


def install(fault: str) -> None:
    for part in fault.split("+"):
        kind, *args = part.split(":")
        if kind == "stall":
            glob, k = args[0], int(args[1])
            flag = os.environ.get("FAULT_FLAG")
            _patch_renames(
                glob, lambda src, n, k=k, f=flag: _stall(src, f) if src and n == k else None
            )
        elif kind == "nan":
            _patch_loss(args[0], int(args[1]))
        elif kind != "none":
            raise ValueError(f"unknown fault {part!r}")


def _patch_loss(term: str, k: int) -> None:
    from mmdisco.loss import JointLoss

    call, calls = JointLoss.__call__, [0]

    def poisoned(self, *args, **kwargs):
        terms = call(self, *args, **kwargs)
        if calls[0] == k:
            terms[term] = terms[term] * float("nan")
            terms["loss"] = (terms["l_d"] if self.bce else 0.0) + self.lambda_dsm * terms["l_dsm"]
        calls[0] += 1
        return terms

    JointLoss.__call__ = poisoned


def main() -> None:
    fault, target, *args = sys.argv[1:]
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    install(fault)
    if target == "-c":
        sys.argv = ["-c", *args[1:]]
        exec(compile(args[0], "<fault child>", "exec"), {"__name__": "__main__"})
        return
    sys.argv = [target, *args]
    runpy.run_path(target, run_name="__main__")


# -- parent side --------------------------------------------------------------------------------
def command(fault: str, script: str, *args: str, procs: int = 1) -> list[str]:
    """The child's command line; ``procs`` > 1: that many processes under torchrun (gloo)."""
    target = script if script == "-c" else str(ROOT / "scripts" / script)
    launcher = [sys.executable]
    if procs > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    return [*launcher, str(Path(__file__).resolve()), fault, target, *args]


def run(
    fault: str, script: str, *args: str, check: bool = True, procs: int = 1
) -> subprocess.CompletedProcess:
    """Run ``script`` with ``fault`` to its end; with ``check`` a failure shows its output."""
    proc = subprocess.run(
        command(fault, script, *args, procs=procs),
        cwd=ROOT, env=ENV, capture_output=True, text=True,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def kill_at_stall(
    tmp: Path, fault: str, script: str, *args: str, timeout: float = 240, procs: int = 1
) -> None:
    """Start ``script`` with a ``stall:`` fault; once it stalls, SIGKILL it and every process it
    started (with ``procs`` > 1: the launcher and all ranks at once)."""
    flag = Path(tmp) / f"stalled-{time.monotonic_ns()}"
    env = {**ENV, "FAULT_FLAG": str(flag)}
    proc = subprocess.Popen(
        command(fault, script, *args, procs=procs),
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _wait_for(flag, proc, script, fault, timeout)
    finally:  # stalled, or failed: every process it started goes
        family = [proc.pid, *descendants(proc.pid)]  # torchrun: each rank in its own session
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while any(_running(pid) for pid in family[1:]):  # orphans, reaped by init
        assert time.monotonic() < deadline, "a killed rank is still running"
        time.sleep(0.02)


def _wait_for(flag: Path, proc, script: str, fault: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not flag.exists():
        if proc.poll() is not None:
            raise AssertionError(f"{script} ended before the fault:\n{proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"{script} did not reach the fault {fault}"
        time.sleep(0.02)


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (Linux /proc)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            out[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return out


def descendants(pid: int) -> list[int]:
    parents, found, todo = _parents(), [], [pid]
    while todo:
        parent = todo.pop()
        children = [c for c, p in parents.items() if p == parent]
        found += children
        todo += children
    return found


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


if __name__ == "__main__":
    main()
