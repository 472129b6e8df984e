"""torch hub's checkpoint folder, and the SHA-256 of weights files, computed once per version of a file.

A file's hash is remembered for the life of the process and, for a file in :func:`cache_dir`, in a sidecar
``.<name>.sha256`` beside it that records the version it was computed for, so that neither a run nor each
``statistics()`` re-reads 92 MB of weights.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

_CHUNK = 1 << 20

# resolved path -> (version, hex SHA-256); see sha256_of.
_known_hashes: dict[Path, tuple[tuple[int, ...], str]] = {}


def cache_dir() -> Path:
    """torch hub's checkpoint folder, where ``torch.hub.load_state_dict_from_url`` keeps downloads too."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read once per version of the file.

    A version is the file's (device, inode, size, mtime, ctime): rewriting, replacing or touching the file makes
    a new one. The hash is remembered for the life of the process, and for a file in ``cache_dir()`` also in a
    sidecar ``.<name>.sha256`` beside it, so that the next run does not read the 92 MB of weights again.
    """
    path = Path(path).resolve()
    version = _version(path)
    known = _known_hashes.get(path)
    if known is not None and known[0] == version:
        return known[1]
    digest = _read_sidecar(path, version)
    if digest is None:
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                sha.update(chunk)
        digest = sha.hexdigest()
        _write_sidecar(path, version, digest)
    _known_hashes[path] = (version, digest)
    return digest


def record_sha256(path: Path, digest: str) -> None:
    """Remember ``digest``, the hex SHA-256 of the file at ``path`` as it is now (e.g. one just downloaded and
    verified), as :func:`sha256_of` would after reading it."""
    resolved, version = path.resolve(), _version(path)
    _known_hashes[resolved] = (version, digest)
    _write_sidecar(resolved, version, digest)


def _version(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _sidecar(path: Path) -> Path | None:
    """Where the hash of ``path`` (resolved) is kept across processes: only files in the cache have one."""
    return path.parent / f".{path.name}.sha256" if path.parent == cache_dir().resolve() else None


def _sidecar_line(version: tuple[int, ...], digest: str) -> str:
    return " ".join([digest, *map(str, version)]) + "\n"


def _read_sidecar(path: Path, version: tuple[int, ...]) -> str | None:
    """The hash recorded for this version of ``path``, or None (no record, another version, a torn write)."""
    sidecar = _sidecar(path)
    try:
        text = sidecar.read_text() if sidecar is not None else ""
    except (OSError, UnicodeDecodeError):
        return None
    digest = text[:64]
    if re.fullmatch("[0-9a-f]{64}", digest) and text == _sidecar_line(version, digest):
        return digest
    return None


def _write_sidecar(path: Path, version: tuple[int, ...], digest: str) -> None:
    sidecar = _sidecar(path)
    if sidecar is None:
        return
    try:
        sidecar.write_text(_sidecar_line(version, digest))
    except OSError:  # a read-only cache: hashed once per process instead
        pass
