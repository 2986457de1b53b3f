"""Read back what a wandb offline run wrote (config, summary, history, artifacts), for the tests.

This parses wandb's transaction log with wandb's own protobuf definitions; it is a test helper,
not a stable interface of wandb. wandb finishes writing the log shortly after ``run.finish()``
returns: call ``wandb.teardown()`` first when reading a run that this process has just finished.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

_BLOCK = 32768
_HEADER = 7  # ":W&B", magic 0xBEE1, version byte


def _records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb transaction log")
    out, buf, pos = [], b"", _HEADER
    while pos + 7 <= len(data):
        space = _BLOCK - pos % _BLOCK
        if space < 7:
            pos += space
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            out.append(chunk)
        elif kind == 2:  # first
            buf = chunk
        elif kind == 3:  # middle
            buf += chunk
        elif kind == 4:  # last
            out.append(buf + chunk)
            buf = b""
        else:
            break
    return out


def _set(target: dict, item) -> None:
    keys = list(item.nested_key) or [item.key]
    node = target
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = json.loads(item.value_json)


def read_offline_run(path: str | os.PathLike) -> dict[str, Any]:
    """Read back an offline run's identity, config, summary, history and artifacts.

    Args:
        path: the run folder (``.../wandb/offline-run-*``) or its ``run-*.wandb`` file.

    Returns:
        ``{"id", "project", "group", "job_type", "name", "config", "summary", "history",
        "artifacts"}``; ``history`` is a list of metric dicts (with ``_step``), ``artifacts`` a
        list of ``{"name", "type", "metadata"}``.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb"))
        if not files:
            raise FileNotFoundError(f"no run-*.wandb file in {path}")
        path = files[0]
    out: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "artifacts": []}
    for raw in _records(path):
        record = pb.Record.FromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out.update(id=r.run_id, project=r.project, group=r.run_group, job_type=r.job_type, name=r.display_name)
            for item in r.config.update:
                _set(out["config"], item)
        elif kind == "config":
            for item in record.config.update:
                _set(out["config"], item)
        elif kind == "summary":
            for item in record.summary.update:
                _set(out["summary"], item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, item)
            out["history"].append(row)
        elif kind == "artifact":
            a = record.artifact
            out["artifacts"].append({"name": a.name, "type": a.type, "metadata": json.loads(a.metadata or "{}")})
    return out
