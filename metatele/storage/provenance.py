"""Where a result came from: git commit, versions, machine (recorded in checkpoints and reports)."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from .container import PathLike


def _git(path: PathLike | None, *args: str) -> str | None:
    """Output of ``git -C path args`` (default: this package's folder); ``None`` on any failure."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=5, check=False)
    except Exception:  # noqa: BLE001 - provenance must never fail a save
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(path: PathLike | None = None) -> str | None:
    """``git rev-parse HEAD`` of the repository holding ``path`` (default: this package).

    Returns ``None`` when git is missing, ``path`` is not in a repository, or anything fails.
    """
    commit = _git(path, "rev-parse", "HEAD")
    return commit if commit and len(commit) >= 40 else None


def git_dirty(path: PathLike | None = None) -> bool | None:
    """Whether tracked files differ from ``HEAD`` (``None`` when unknown)."""
    status = _git(path, "status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_info(device: torch.device) -> dict[str, Any]:
    """Platform, CPUs, versions, git commit and load average (for reports)."""
    cpu = platform.processor() or platform.machine()
    try:  # Linux: the model name says more than "x86_64"
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "processor": cpu,
            "cpu_count": os.cpu_count(), "cpus_available": available_cpus(), "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
            "load_average_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
            "metatele": __version__, "git_commit": git_commit(), "git_dirty": git_dirty()}
