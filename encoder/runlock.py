"""An exclusive lock on a run directory (a trainer's `checkpoint.dir`, the pipeline's workdir).

Two writers on one directory interleave checkpoints, metrics and `final/`, and one deletes the other's
temporary files as "stale". `RunLock` takes `fcntl.flock` on `<dir>/.lock`: the kernel releases it when the
holding process exits, however it exits, so a killed run never leaves a lock behind. The holder's pid is
written into the file so a second run can say who holds it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """Another live process holds the directory."""


class RunLock:
    """`with RunLock(directory):` holds the directory for this process (re-entrant only through nesting
    the same object; a second `RunLock` on the same directory fails even in the same process)."""

    def __init__(self, directory: str | Path, what: str = "run directory") -> None:
        self.directory = Path(directory)
        self.what = what
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.directory / LOCK_FILE

    def acquire(self) -> RunLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(f"{self.directory}: this {self.what} is in use by another process (pid {holder}); "
                                 f"wait for it to finish or stop it (lock file {self.path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # the file stays (removing it would race a waiting process's open)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
