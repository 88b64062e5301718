"""One writer per run directory: ``run_dir/.lock`` holds the owner's pid and host.

    lock = RunLock(run_dir).acquire()   # RunLockedError if another live process holds it
    ...
    lock.release()                      # also done at interpreter exit

The lock file is created with O_CREAT | O_EXCL (atomic: of two processes exactly one creates
it). A lock whose pid is dead on this host is stale (its owner was killed): it is taken over,
and a warning says so; so is one whose pid is a zombie or was reused by a later process (the
lock records the owner's start time). A lock from another host cannot be checked from here
and is never taken over: the message says how to remove it by hand. The same process may
acquire the lock of a run directory again (e.g. ``train`` called twice from a notebook).
"""

from __future__ import annotations

import atexit
import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """The run directory is in use by another live process."""


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a Linux process; None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return ("X", -1) if Path("/proc/self/stat").exists() else None
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2 :].split()  # fields 3.. (the name may hold spaces)
    return rest[0], int(rest[19])


def process_start(pid: int | None = None) -> int | None:
    """The start time of ``pid`` (this process by default) in clock ticks since boot (Linux)."""
    stat = _proc_stat(os.getpid() if pid is None else pid)
    return None if stat is None or stat[1] < 0 else stat[1]


def pid_alive(pid: int, start: int | None = None) -> bool:
    """Whether process ``pid`` runs on this host: a zombie (killed, not yet reaped by its
    parent, as the ranks of a killed launcher in a container) is dead, and so is a pid reused
    by a process started at another time than ``start``."""
    if pid <= 0:
        return False
    stat = _proc_stat(pid)
    if stat is not None:
        state, started = stat
        return state not in "ZXx" and (start is None or started == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunLock:
    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.held = False

    def _owner_record(self) -> dict:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
            "start": process_start(),  # tells a reused pid from the owner
        }

    def _create(self) -> bool:
        """Create the lock file atomically; False if it exists already."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._owner_record(), f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def owner(self) -> dict | None:
        """The lock's record ({pid, host, since}); {} for an unreadable or half-written one;
        None without a lock file."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {}

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # a few rounds: another process may take over a stale lock too
            if self._create():
                return self._held()
            owner = self.owner()
            if owner is None:
                continue  # released meanwhile
            host, pid = owner.get("host"), int(owner.get("pid", -1))
            here = host == socket.gethostname()
            if here and pid == os.getpid():
                return self._held()  # ours already (re-entrant within one process)
            if not owner and time.time() - self.path.stat().st_mtime < 5:
                time.sleep(0.1)  # being written by its creator this instant
                continue
            if owner and not (here and not pid_alive(pid, owner.get("start"))):
                raise RunLockedError(self._in_use(owner))
            self._take_over(owner)
        raise RunLockedError(f"could not take the lock {self.path}: other processes race for it")

    def _take_over(self, owner: dict) -> None:
        """Remove a stale lock (dead pid on this host, or an empty record left by a kill
        between create and write): rename it to a name of our own, so that of two processes
        taking it over only one removes it."""
        mine = self.path.with_name(f"{LOCK_FILE}.stale.{os.getpid()}")
        try:
            os.rename(self.path, mine)
        except FileNotFoundError:
            return
        taken = _read(mine)
        if taken != owner:  # someone else's fresh lock: put it back
            try:
                os.link(mine, self.path)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
        else:
            what = f"pid {owner.get('pid')} on {owner.get('host')}" if owner else "no owner"
            log.warning("run_dir %s: took over a stale lock (%s is gone)", self.run_dir, what)
        mine.unlink(missing_ok=True)

    def _held(self) -> RunLock:
        if not self.held:
            self.held = True
            atexit.register(self.release)
        return self

    def _in_use(self, owner: dict) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("since", 0)))
        return (
            f"run_dir {self.run_dir} is in use by pid {owner.get('pid')} on host "
            f"{owner.get('host')} (since {since}; lock file {self.path}). Wait for it to "
            "finish or use another run_dir. If that process is gone (it ran on another "
            f"machine, or its pid was reused), delete {self.path}"
        )

    def release(self) -> None:
        """Remove the lock file if it is still ours."""
        if not self.held:
            return
        self.held = False
        owner = self.owner()
        if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError):
        return {}
