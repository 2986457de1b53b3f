"""One file format for everything metatele stores: a safetensors file with one JSON document.

A *container* is a ``.safetensors`` file. Its tensors are whatever the writer stores; its header
metadata holds::

    {"format": <format>, <key>: <JSON document>, <key>_sha256: <sha256 of that JSON text>}

and the document itself carries ``format``, ``format_version`` and ``payload_sha256`` (a sha256
over every tensor's name, dtype, shape and bytes). So a flipped byte anywhere in the file is
caught: in the header as a parse or hash error, in the data as a payload mismatch.

Reading never unpickles anything: the file is parsed as safetensors, and a pickle or a
``torch.save`` archive is recognised by its first bytes and refused before any of it is read.
Writes go through :func:`atomic_write` (a fsynced temporary file, then ``os.replace``), so a
crash midway leaves any previous file intact.

Two kinds exist: learned-optimizer checkpoints (:mod:`metatele.release.checkpoint`) and
training states (:mod:`metatele.meta.state`). Each is one :class:`Container` value.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load, save

from .._version import __version__

PathLike = str | os.PathLike
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the header size


class ContainerError(ValueError):
    """A stored file is missing, truncated, damaged, foreign, or of an unknown format version."""


def payload_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: PathLike) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and ``os.replace``.

    A failure at any point (full disk, kill) leaves whatever was at ``path`` before untouched and
    removes the temporary file. The file gets the usual permissions (``0o666`` less the umask).
    Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            for i in range(0, len(data), 1 << 22):
                f.write(data[i:i + (1 << 22)])
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable (best effort; not possible on every platform)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


@dataclass(frozen=True)
class Container:
    """One kind of metatele file (see the module docstring).

    Attributes:
        format: the format name, in the header metadata and in the document.
        version: the format version this metatele writes and reads.
        key: the header-metadata key of the JSON document (its sha256 is under ``key + "_sha256"``).
        what: what a file of this kind is called in messages (``checkpoint``, ``training state``).
        writer: the function that writes such files (named in messages about foreign files).
        sort_keys: write the document with sorted keys.
    """

    format: str
    version: int
    key: str
    what: str
    writer: str
    sort_keys: bool = False

    @property
    def hash_key(self) -> str:
        return f"{self.key}_sha256"

    def encode(self, tensors: Mapping[str, torch.Tensor], doc: Mapping[str, Any]) -> bytes:
        """The bytes of a file holding ``tensors`` and ``doc`` (JSON-able; ``format``,
        ``format_version`` and ``payload_sha256`` are added)."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        full = {**doc, "format": self.format, "format_version": self.version,
                "payload_sha256": payload_sha256(tensors)}
        text = json.dumps(full, sort_keys=self.sort_keys, separators=(",", ":"))
        metadata = {"format": self.format, self.key: text,
                    self.hash_key: hashlib.sha256(text.encode()).hexdigest()}
        return save(tensors, metadata=metadata)

    def read_bytes(self, path: PathLike, error: type[ContainerError] = ContainerError) -> bytes:
        """The bytes of the file at ``path``; ``error`` if it is missing or a directory."""
        path = Path(path)
        if not path.exists():
            raise error(f"{self.what} not found: {path}")
        if path.is_dir():
            raise error(f"{path} is a directory, not a {self.what} file")
        return path.read_bytes()

    def document(self, data: bytes, where: str, error: type[ContainerError] = ContainerError) -> dict[str, Any]:
        """The verified JSON document of a file's bytes (the tensors are not read yet).

        Raises ``error`` ("<where> is ...") when the bytes are truncated, damaged, foreign (a
        pickle, a ``torch.save`` archive, another safetensors file) or of another version.
        """
        if len(data) <= 8:
            raise error(f"{where} is truncated or not a {self.what}: {len(data)} bytes")
        (n,) = struct.unpack("<Q", data[:8])
        if n > _MAX_HEADER or data[8:9] != b"{":  # not safetensors: say what it is, never parse it
            if data[:4] == b"PK\x03\x04":
                raise error(f"{where} is a zip archive (the torch.save format, which holds a pickle); metatele "
                            f"never unpickles files. A {self.what} is a safetensors file written by {self.writer}")
            if data[0] == 0x80 and 2 <= data[1] <= 5:
                raise error(f"{where} is a Python pickle; metatele never unpickles files (it could run arbitrary "
                            f"code). A {self.what} is a safetensors file written by {self.writer}")
            raise error(f"{where} is not a safetensors {self.what} (corrupted, or a foreign file such as a "
                        "pickle, which metatele never unpickles)")
        if n > len(data) - 8:
            raise error(f"{where} is truncated: its header needs {n} bytes, the file has {len(data) - 8}")
        try:
            header = json.loads(data[8:8 + n].decode("utf-8"))
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
            meta = header.get("__metadata__") or {}
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise error(f"{where} is corrupted: cannot parse its header ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != self.format or self.key not in meta:
            raise error(f"{where} is a safetensors file but not a metatele {self.what} (no '{self.format}' metadata)")
        size, need = len(data) - 8 - n, max(ends, default=0)
        if size < need:
            raise error(f"{where} is truncated: the tensors need {need} bytes after the header, the file has {size}")
        if size > need:
            raise error(f"{where} is corrupted: {size - need} unexpected bytes after the tensors")
        text = meta[self.key]
        if hashlib.sha256(text.encode()).hexdigest() != meta.get(self.hash_key):
            raise error(f"{where} is corrupted: its metadata does not match the recorded sha256")
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise error(f"{where} is corrupted: cannot parse its metadata ({e})") from None
        if not isinstance(doc, dict):
            raise error(f"{where} is corrupted: its metadata is not a JSON object")
        version = doc.get("format_version")
        if version != self.version:
            raise error(f"{where} has {self.what} format version {version!r}; this metatele ({__version__}) "
                        f"reads version {self.version}")
        if "payload_sha256" not in doc:
            raise error(f"{where} is missing metadata field 'payload_sha256'")
        return doc

    def tensors(self, data: bytes, doc: Mapping[str, Any], where: str,
                error: type[ContainerError] = ContainerError) -> dict[str, torch.Tensor]:
        """The tensors of a file's bytes, checked against the document's ``payload_sha256``."""
        try:
            tensors = load(data)
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise error(f"{where} is corrupted: cannot read its tensors ({e})") from None
        if payload_sha256(tensors) != doc["payload_sha256"]:
            raise error(f"{where} is corrupted: its tensors do not match the recorded sha256")
        return tensors

    def decode(self, data: bytes, where: str,
               error: type[ContainerError] = ContainerError) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """``(document, tensors)`` of a file's bytes, both verified."""
        doc = self.document(data, where, error)
        return doc, self.tensors(data, doc, where, error)
