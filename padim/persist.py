"""Safe, versioned, atomic persistence of padim models.

A model file is a safetensors container: named tensors plus a string->string
header. Loading it parses JSON and raw tensor bytes only, so a hostile file
cannot execute code (the seed implementation pickled its state). The header holds

* ``format`` = ``padim``, ``format_version``, ``library_version``,
* ``variant`` (``padim``, ``shared``, ``svdd``, ``nvp``),
* ``config``: JSON with everything needed to rebuild the model and resume,
* ``digest``: SHA-256 over every tensor's name, dtype, shape and bytes, so a
  flipped bit in the payload is caught instead of silently scoring garbage.

Writes go to a temporary file in the target directory, are fsynced, then renamed
over the destination, and the directory is fsynced: a crash leaves the old file
or the new one, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from padim.errors import PersistError

FORMAT_NAME = "padim"
FORMAT_VERSION = 1


def library_version() -> str:
    from padim import __version__

    return __version__


@dataclass(frozen=True)
class ModelRecord:
    """The decoded content of a model file."""

    variant: str
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    format_version: int
    library_version: str


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            # Hash the tensor's own memory: a model's statistics are tens of MB, and
            # .tobytes() would copy them once more on every save and load.
            digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def encode(variant: str, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    """Serialise a model to bytes (for files, snapshots or the wire)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "library_version": library_version(),
        "variant": variant,
        "config": json.dumps(config, sort_keys=True),
        "digest": tensor_digest(tensors),
    }
    return st_save(tensors, metadata=metadata)


def decode(data: bytes, source: str = "model data") -> ModelRecord:
    """Parse and verify bytes written by :func:`encode`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PersistError(f"{source}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 8:
        raise PersistError(f"{source} is truncated or empty ({len(data)} bytes): not a padim model")
    try:
        header_len = int.from_bytes(data[:8], "little")
        if header_len <= 0 or header_len > len(data) - 8:
            raise PersistError(f"{source} is not a padim model file (bad header length) or is truncated")
        header = json.loads(data[8 : 8 + header_len])
        tensors = st_load(data)
    except PersistError:
        raise
    except (SafetensorError, ValueError, UnicodeDecodeError, RuntimeError) as exc:
        raise PersistError(f"{source} is not a padim model file or is corrupt: {exc}") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise PersistError(f"{source} is a safetensors file but not a padim model (no padim header)")
    try:
        version = int(meta["format_version"])
        config = json.loads(meta["config"])
        variant = meta["variant"]
        expected_digest = meta["digest"]
    except (KeyError, ValueError, TypeError) as exc:
        raise PersistError(f"{source} has a damaged padim header: {exc}") from exc
    if version > FORMAT_VERSION:
        raise PersistError(
            f"{source} uses padim format {version}; this library reads up to {FORMAT_VERSION} "
            "(upgrade padimd to load it)"
        )
    if tensor_digest(tensors) != expected_digest:
        raise PersistError(f"{source} is corrupt: tensor data does not match its checksum")
    if not isinstance(config, dict):
        raise PersistError(f"{source} has a damaged padim header: config is not an object")
    return ModelRecord(variant, config, tensors, version, meta.get("library_version", "unknown"))


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never a mix."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_file(path: str | os.PathLike[str]) -> bytes:
    """Read a model file, turning OS errors into :class:`PersistError`."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise PersistError(f"cannot read model file {str(path)!r}: {exc.strerror or exc}") from exc
