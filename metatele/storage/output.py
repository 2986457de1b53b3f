"""Output folders: checked before any work, and locked while a command writes into them.

:func:`check_output_folder` says before any work whether ``--out`` can be written (a folder, or a
path whose nearest existing parent is a writable folder), without creating anything.

Two commands writing into one ``--out`` would overwrite each other's files silently, so every
command that writes an output folder holds :class:`FolderLock` for its lifetime. The lock is an
advisory ``fcntl.flock`` on ``OUT/.metatele.lock``: the kernel releases it when the holder exits in
any way (``kill -9`` included), so a lock left by a dead run is never in force: the next run takes
it over and says so. The file records the holder (pid, host, command, start time) for the message
a second run refuses with.

``flock`` is reliable on local file systems; on network file systems it depends on the server
(NFSv4 emulates it with POSIX locks; some older setups do not lock across machines). Where the
platform has no ``fcntl`` (Windows) the folder is not locked, and the command says so once.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from .container import ContainerError

LOCK_NAME = ".metatele.lock"


class OutputFolderError(ContainerError):
    """An output folder cannot be written, or is in use."""


class FolderBusyError(OutputFolderError):
    """Another running command holds the lock on the output folder."""


def check_output_folder(folder: str | os.PathLike, create: bool = False) -> None:
    """Raise :class:`OutputFolderError` unless files can be written in ``folder``.

    ``folder`` must be a non-empty path that is a folder or does not exist yet; a probe file is
    written (and removed) in it, or, when it does not exist and ``create`` is off, in its nearest
    existing parent, so that nothing is left behind. With ``create`` the folder is made.
    """
    if not os.fspath(folder).strip():
        raise OutputFolderError("--out: an empty path; name an output folder")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"output folder {folder} is a file, not a folder; choose another --out")
    probe_in = folder
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        while not probe_in.exists():
            probe_in = probe_in.parent
        if not probe_in.is_dir():
            raise OutputFolderError(f"output folder {folder}: {probe_in} is a file, not a folder; choose another --out")
        fd, probe = tempfile.mkstemp(dir=probe_in, prefix=".write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputFolderError(f"output folder {folder} is not writable ({e}); choose another --out") from None


def _holder(path: Path) -> dict[str, Any]:
    """What the lock file says about its holder (``{}`` when unreadable)."""
    try:
        doc = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _describe(doc: dict[str, Any]) -> str:
    who = f"pid {doc.get('pid', '?')}"
    if doc.get("host") and doc["host"] != socket.gethostname():
        who += f" on host {doc['host']}"
    if doc.get("command"):
        who += f", `{doc['command']}`"
    if doc.get("started"):
        who += f", since {doc['started']}"
    return who


class FolderLock:
    """An exclusive lock on ``folder`` (created if needed), held from :meth:`acquire` to :meth:`release`.

    Use as a context manager. ``command`` names the holder in the message a second command gets.

    Raises:
        FolderBusyError: on :meth:`acquire`, when another process holds the lock (the message
            names its pid, host and command).
    """

    def __init__(self, folder: str | os.PathLike, command: str = "metatele") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self._fd: int | None = None
        #: the holder recorded in a lock file this process took over (``None``: none was left)
        self.taken_over: dict[str, Any] | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FolderLock":
        """Take the lock now, or raise :class:`FolderBusyError` at once (never waits)."""
        if self._fd is not None:
            return self
        if fcntl is None:  # pragma: no cover - Windows
            print(f"metatele: this platform has no fcntl: {self.folder} is not locked against a second run",
                  file=sys.stderr, flush=True)
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FolderBusyError(f"{self.folder} is in use by another run ({_describe(_holder(self.path))}); "
                                      "wait for it to finish, stop it, or choose another --out") from None
            except OSError:
                os.close(fd)
                raise
            try:  # the holder may have released (and removed) the file between our open and flock
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        left = _holder(self.path)
        self.taken_over = left or None  # a holder that died without releasing (its lock went with it)
        if left:
            print(f"metatele: took over the lock on {self.folder} left by a run that is no longer running "
                  f"({_describe(left)})", file=sys.stderr, flush=True)
        doc = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
               "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        data = json.dumps(doc).encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up (the lock file is removed; nothing if not held)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # still ours: no other process can hold it before we close
        except OSError:
            pass
        os.close(self._fd)  # closing releases the flock
        self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
