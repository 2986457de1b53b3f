"""Output folders: checked before any work, locked while a command writes into them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from metatele.storage.output import (LOCK_NAME, FolderBusyError, FolderLock, OutputFolderError,
                                     check_output_folder)

from helpers import subprocess_env

HOLD = ("import sys, time; from metatele.storage.output import FolderLock; "
        "FolderLock(sys.argv[1], 'holder').acquire(); print('held', flush=True); time.sleep(60)")


def hold_in_child(folder) -> subprocess.Popen:
    """A process that holds the lock on ``folder`` until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=subprocess_env(), stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_at_once_and_a_killed_holders_lock_is_taken_over(tmp_path, capsys):
    proc = hold_in_child(tmp_path / "out")
    try:
        t0 = time.monotonic()
        with pytest.raises(FolderBusyError, match=rf"in use by another run \(pid {proc.pid}, `holder`"):
            FolderLock(tmp_path / "out", "second").acquire()
        assert time.monotonic() - t0 < 1  # it never waits
    finally:
        proc.send_signal(signal.SIGKILL)  # dies without releasing: the file stays, naming it
        proc.wait()
    assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["pid"] == proc.pid
    with FolderLock(tmp_path / "out", "next") as lock:
        assert lock.held and lock.taken_over["pid"] == proc.pid
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert f"took over the lock on {tmp_path / 'out'} left by a run that is no longer running (pid {proc.pid}" \
        in capsys.readouterr().err
    assert not (tmp_path / "out" / LOCK_NAME).exists()  # released: the file is gone
    with FolderLock(tmp_path / "out") as again:  # and the folder can be locked again
        assert again.taken_over is None


def test_one_process_cannot_lock_a_folder_twice(tmp_path):
    with FolderLock(tmp_path):
        with pytest.raises(FolderBusyError):
            FolderLock(tmp_path).acquire()


def test_output_folder_checks_create_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "file")
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "file" / "sub")
    with pytest.raises(OutputFolderError, match="an empty path"):
        check_output_folder("")
    check_output_folder(tmp_path / "a" / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no folder, no probe left


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_read_only_folder_is_refused(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        with pytest.raises(OutputFolderError, match="not writable"):
            check_output_folder(tmp_path / "ro" / "out")
    finally:
        (tmp_path / "ro").chmod(0o700)
