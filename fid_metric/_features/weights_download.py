"""Verified, atomic, time-bounded downloads of weights files.

A download is written to a ``.partial`` file beside the target, named with the host and process id, and renamed
into place only once verified against an expected SHA-256 (or a prefix of it, as torch hub names its files
``<stem>-<hex digits>.<ext>``): a failed or corrupt download leaves nothing behind. A process killed
mid-download (SIGTERM) cannot clean up, so the next download of the file removes its ``.partial`` once the
process is gone (same host) or has not written for an hour (another host sharing the folder). A download must get
data every 60 s and finish within an overall deadline, ``$FID_METRIC_DOWNLOAD_TIMEOUT`` seconds (default: the
time the file takes at 160 kB/s, at least 600 s), so a server that trickles bytes cannot hold a job: it ends at
most one read timeout (60 s, or the deadline if shorter) past the deadline.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from fid_metric._features.weights_cache import record_sha256

ENV_TIMEOUT = "FID_METRIC_DOWNLOAD_TIMEOUT"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,64})\.")
_READ_TIMEOUT_S = 60
# The default deadline: 600 s, i.e. the official 95.6 MB at 160 kB/s (1.3 Mbit/s), eight times as long as they
# take at 10 Mbit/s; a larger file (a DINOv2 mirror) gets the same rate.
_MIN_DEADLINE_S = 600
_SLOWEST_BYTES_PER_S = 160_000
# A live download writes at least every _READ_TIMEOUT_S, so an hour without a write means its writer is gone.
_STALE_PARTIAL_S = 3600
_PARTIAL = ".partial"
_CHUNK = 1 << 20


def url_name(url: str) -> str:
    """The file name in ``url``'s path, e.g. ``pt_inception-2015-12-05-6726825d.pth``."""
    return Path(urllib.parse.urlparse(url).path).name


def hashed_example(name: str) -> str:
    """``name`` as torch hub names a download: ``dinov2_vitl14_pretrain-<sha256[:8]>.pth``."""
    path = Path(name)
    return f"{path.stem}-<sha256[:8]>{path.suffix}"


def expected_hash_prefix(url: str) -> str:
    """The SHA-256 prefix in the URL's file name, e.g. ``6726825d``; ValueError if the name has none."""
    name = url_name(url)
    match = _HASH_IN_NAME.search(name)
    if match is None:
        raise ValueError(
            f"The weights URL {url!r} has no SHA-256 prefix in its file name, so the download could not be "
            f"verified. A mirror must name the file as torch hub does, e.g. {hashed_example(name or 'weights')}."
        )
    return match.group(1)


def download_verified(url: str, target: Path, sha256: str, size: int | None) -> Path:
    """Download ``url`` to ``target``: verified, atomic, within the deadline; return ``target``.

    ``sha256``: the expected hex digest, or a prefix of it. ``size``: the expected bytes, if known; a response
    that announces or sends another count is refused as soon as it does. The hash is recorded
    (``weights_cache.record_sha256``), so that the file is not read again to verify it.

    Raises:
        RuntimeError: the response announces or sends a count other than ``size``, or the bytes do not hash
            to ``sha256`` (nothing is kept).
        ValueError: ``$FID_METRIC_DOWNLOAD_TIMEOUT`` is not a positive number (before any request).
        OSError, http.client.HTTPException: the server cannot be reached, is too slow, or breaks off.
    """
    deadline_s = _deadline_s(size)  # a malformed $FID_METRIC_DOWNLOAD_TIMEOUT fails before any request
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(target)
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=min(_READ_TIMEOUT_S, deadline_s)) as response:
        length = response.headers["Content-Length"]
        announced = int(length) if length else None
        if size is not None and announced not in (None, size):
            raise RuntimeError(
                f"{url} announces {announced} bytes, but the expected file has {size}: it is not the expected "
                "file. Nothing was saved."
            )
        if size is None and announced is not None:
            deadline_s = _deadline_s(announced)
        fd, tmp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.{socket.gethostname()}.{os.getpid()}.", suffix=_PARTIAL
        )
        try:
            with os.fdopen(fd, "wb") as tmp:
                actual = _receive(response, tmp, announced or size, started, deadline_s)
            if not actual.startswith(sha256):
                raise RuntimeError(
                    f"Downloaded weights from {url} are corrupt or not the expected file: SHA-256 {actual} does "
                    f"not start with {sha256}. Nothing was saved."
                )
            os.chmod(tmp_name, 0o644)  # mkstemp makes it owner-only; a shared cache must be readable
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    record_sha256(target, actual)
    return target


def _receive(
    response: http.client.HTTPResponse, out: BinaryIO, size: int | None, started: float, deadline_s: float
) -> str:
    """Copy ``response`` to ``out`` until it ends (after ``size`` bytes, if known), ``deadline_s`` after ``started``.

    Returns the hex SHA-256 of the bytes. Raises ``TimeoutError`` past the deadline or when no data came within
    the read timeout, ``RuntimeError`` for more than ``size`` bytes, ``http.client.HTTPException`` for fewer.
    """
    sha, received = hashlib.sha256(), 0
    while True:
        try:
            chunk = response.read1(_CHUNK)  # what has arrived, so that the deadline is checked in between
        except TimeoutError as err:
            raise _too_slow(received, size, started, deadline_s) from err
        if not chunk:
            break
        received += len(chunk)
        if size is not None and received > size:
            raise RuntimeError(f"the server sent more than the expected {size} bytes. Nothing was saved.")
        sha.update(chunk)
        out.write(chunk)
        out.flush()  # the mtime tells other processes that this download is alive
        if time.monotonic() - started > deadline_s:
            raise _too_slow(received, size, started, deadline_s)
    if size is not None and received != size:
        raise http.client.HTTPException(f"the response ended after {received} of {size} bytes")
    return sha.hexdigest()


def _too_slow(received: int, size: int | None, started: float, deadline_s: float) -> TimeoutError:
    return TimeoutError(
        f"gave up after {time.monotonic() - started:.1f} s with {received} of {size or '?'} bytes: a download must "
        f"get data every {min(_READ_TIMEOUT_S, deadline_s):g} s and finish within {deadline_s:g} s (set "
        f"${ENV_TIMEOUT} to allow longer)"
    )


def _deadline_s(size: int | None) -> float:
    """The overall download deadline: ``$FID_METRIC_DOWNLOAD_TIMEOUT``, else the default for ``size`` bytes."""
    value = os.environ.get(ENV_TIMEOUT)
    if not value:
        return max(_MIN_DEADLINE_S, (size or 0) / _SLOWEST_BYTES_PER_S)
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise ValueError(
            f"${ENV_TIMEOUT} must be a number of seconds > 0 (the overall download deadline), not {value!r}"
        )
    return seconds


def _remove_stale_partials(target: Path) -> None:
    """Delete the ``.partial`` files of ``target`` whose download was killed (see the module docstring).

    A ``.partial`` is named ``.<target name>.<host>.<pid>.<random>.partial``; other names are left alone.
    """
    host, prefix = socket.gethostname(), f".{target.name}."
    for entry in target.parent.iterdir():
        if not (entry.name.startswith(prefix) and entry.name.endswith(_PARTIAL)):
            continue
        fields = entry.name[len(prefix) : -len(_PARTIAL)].rsplit(".", 2)
        if len(fields) != 3 or not fields[1].isdigit():
            continue
        try:
            gone = fields[0] == host and not _process_exists(int(fields[1]))
            if gone or time.time() - entry.stat().st_mtime > _STALE_PARTIAL_S:
                entry.unlink()
        except OSError:  # its writer renamed or removed it meanwhile, or another user's file in a shared cache
            pass


def _process_exists(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there; the age rule alone applies
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
