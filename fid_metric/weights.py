"""Find, download, verify and load the FID Inception weights.

Where the weights come from, first match wins:

1. the ``feature_extractor_weights_path=`` argument (a local file);
2. the environment variable ``FID_METRIC_WEIGHTS`` (a local file, for offline clusters);
3. ``pt_inception-2015-12-05-6726825d.pth`` in torch hub's checkpoint folder (``torch.hub.get_dir()/checkpoints``),
   if it is the official file;
4. a download from ``FID_METRIC_WEIGHTS_URL`` if set (a mirror), else pytorch-fid's release file, into that
   folder under that name.

The official file is known by its full SHA-256 (``OFFICIAL_SHA256``) and size. The file in the cache and every
download, from pytorch-fid or from a mirror, must match them, whatever hash a mirror's file name claims. Files
given by path or ``$FID_METRIC_WEIGHTS`` are the user's choice and are not compared with them. A file is read
for its hash once per version (``sha256_of``), so neither a run nor each ``statistics()`` re-reads 92 MB.

A download is written to a ``.partial`` file beside the target, named with the host and process id, and renamed
into place only once verified: a failed or corrupt download leaves nothing behind. A process killed mid-download
(SIGTERM) cannot clean up, so the next download of the file removes its ``.partial`` once the process is gone
(same host) or has not written for an hour (another host sharing the folder). A download must get data every
60 s and finish within an overall deadline, ``$FID_METRIC_DOWNLOAD_TIMEOUT`` seconds (default: the time the
file takes at 160 kB/s, at least 600 s), so a server that trickles bytes cannot hold a job: it ends at most one
read timeout (60 s, or the deadline if shorter) past the deadline. Loading uses ``torch.load(weights_only=True)``:
no pickled code runs.
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

import torch
from torch import Tensor

CACHE_NAME = "pt_inception-2015-12-05-6726825d.pth"
DEFAULT_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{CACHE_NAME}"
# DEFAULT_URL's file. The name carries only 8 hex digits; the full digest is the one recorded next to this URL
# in genforce's Inception loader (e.g. snap-research/discoscene, models/inception_model.py,
# _MODEL_URL_SHA256["tf_inception_v3"]), and the size is the one public projects that pin this digest record.
OFFICIAL_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
OFFICIAL_SIZE = 95_628_359
ENV_WEIGHTS = "FID_METRIC_WEIGHTS"
ENV_URL = "FID_METRIC_WEIGHTS_URL"
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

# resolved path -> (version, hex SHA-256); see sha256_of.
_known_hashes: dict[Path, tuple[tuple[int, ...], str]] = {}


class WeightsUnavailableError(RuntimeError):
    """No weights file could be found or downloaded; the message lists what was tried."""


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


def cache_dir() -> Path:
    """torch hub's checkpoint folder, where ``torch.hub.load_state_dict_from_url`` keeps downloads too."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def expected_hash_prefix(url: str) -> str:
    """The SHA-256 prefix in the URL's file name, e.g. ``6726825d``; ValueError if the name has none."""
    match = _HASH_IN_NAME.search(_url_name(url))
    if match is None:
        raise ValueError(
            f"The weights URL {url!r} has no SHA-256 prefix in its file name (expected e.g. "
            "'pt_inception-2015-12-05-6726825d.pth'), so the download could not be verified. A mirror must keep "
            "the original file name."
        )
    return match.group(1)


def download(url: str, directory: str | os.PathLike) -> Path:
    """Download ``url`` into ``directory`` under its own file name, verified by the SHA-256 prefix in that name.

    For files whose full hash is not known here (DINOv2 mirrors); bounded in time and atomic as ``resolve()``'s
    downloads. Raises ``ValueError`` if the name carries no hash, ``RuntimeError`` if the bytes do not hash to it
    (nothing is kept), ``OSError`` (``TimeoutError``, ``urllib.error.URLError``) if the server cannot be reached
    or is too slow, and ``http.client.HTTPException`` if the response breaks off or is malformed.
    """
    return _download(url, Path(directory) / _url_name(url), expected_hash_prefix(url), size=None)


def resolve(path: str | os.PathLike | None = None) -> Path:
    """Return a local weights file, downloading it if needed (see the module docstring for the order)."""
    if path is not None:
        return _existing(Path(path), "feature_extractor_weights_path")
    if os.environ.get(ENV_WEIGHTS):
        return _existing(Path(os.environ[ENV_WEIGHTS]), f"${ENV_WEIGHTS}")
    url = os.environ.get(ENV_URL) or DEFAULT_URL
    cached = cache_dir() / CACHE_NAME
    if not cached.is_file():
        cache_state = "does not exist"
    elif (mismatch := _official_mismatch(cached)) is None:
        return cached
    else:
        cache_state = f"is not the official file ({mismatch})"
    try:
        return _download(url, cached, OFFICIAL_SHA256, OFFICIAL_SIZE)
    except (OSError, http.client.HTTPException, RuntimeError, ValueError) as err:  # URLError is an OSError
        raise WeightsUnavailableError(
            "Could not get the FID Inception weights. Tried:\n"
            f"  - feature_extractor_weights_path: not given\n"
            f"  - ${ENV_WEIGHTS}: not set\n"
            f"  - the cache: {cached} {cache_state}\n"
            f"  - downloading {url}{' (from $' + ENV_URL + ')' if os.environ.get(ENV_URL) else ''}: {err}\n"
            f"Fetch {DEFAULT_URL} (SHA-256 {OFFICIAL_SHA256}) on a machine with internet access and pass "
            f"FrechetInceptionDistance(feature_extractor_weights_path='/path/to/{CACHE_NAME}'), or set "
            f"{ENV_WEIGHTS}=/path/to/{CACHE_NAME}, or copy it to {cached}; or set {ENV_URL} to a mirror of the "
            "same file."
        ) from err


def load_state_dict(path: str | os.PathLike, what: str = "Inception weights") -> dict[str, Tensor]:
    """Load a state dict with ``torch.load(weights_only=True)`` on the CPU; ``what`` names it in errors."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(f"Could not load {what} from {path}: {err}") from err
    if not isinstance(state, dict):
        raise RuntimeError(f"{what} file {path} holds a {type(state).__name__}, not a state dict.")
    return state


def _existing(path: Path, source: str) -> Path:
    if not path.is_file():
        raise WeightsUnavailableError(f"Inception weights file {path} (from {source}) does not exist.")
    return path


def _url_name(url: str) -> str:
    return Path(urllib.parse.urlparse(url).path).name


def _official_mismatch(path: Path) -> str | None:
    """How ``path`` differs from the official file, or None if it is the official file."""
    size = path.stat().st_size
    if size != OFFICIAL_SIZE:  # cheap, and spares reading a truncated copy
        return f"{size} bytes, not {OFFICIAL_SIZE}"
    digest = sha256_of(path)
    if digest != OFFICIAL_SHA256:
        return f"SHA-256 {digest}, not {OFFICIAL_SHA256}"
    return None


def _download(url: str, target: Path, sha256: str, size: int | None) -> Path:
    """Download ``url`` to ``target``: verified, atomic, within the deadline; return ``target``.

    ``sha256``: the expected hex digest, or a prefix of it. ``size``: the expected bytes, if known; a response
    that announces or sends another count is refused as soon as it does.
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
    resolved, version = target.resolve(), _version(target)
    _known_hashes[resolved] = (version, actual)
    _write_sidecar(resolved, version, actual)
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
