"""Find, download, verify and load weights files: one resolver for every file a ``WeightsSpec`` describes.

A ``WeightsSpec`` holds what is known of one file: where it is published, its full SHA-256 and size if known,
and the argument and environment variables that point to it (``INCEPTION`` here,
``fid_metric._features.dinov2.DINOV2``).
``resolve(path, spec)`` takes the first of:

1. ``path``, the caller's argument (``feature_extractor_weights_path=``, ``weights_path=``): a local file;
2. the environment variable ``spec.env_path`` (``FID_METRIC_WEIGHTS``): a local file, for offline clusters;
3. the published file's name in torch hub's checkpoint folder (``torch.hub.get_dir()/checkpoints``), where
   ``torch.hub`` itself keeps downloads; for a file whose hash is not known, a mirror's file name there first;
4. a download from ``spec.env_url`` (``FID_METRIC_WEIGHTS_URL``, a mirror) if set, else from ``spec.url`` if
   the file's hash is known, into that folder.

What is known decides what is checked. A file with a known SHA-256 and size (the Inception file): the cached
file and every download, from ``spec.url`` or from a mirror, whatever hash the mirror's file name claims, must
match them, and a download is saved under the published name. A file without (DINOv2: Meta publishes no
hash): no default download; a mirror's file name must carry a SHA-256 prefix (torch hub's
``<stem>-<hex digits>.<ext>``) that the download must match, and it is saved under that name; cached files are
used as found, like a ``torch.hub.load`` would use them. Files given by path or environment variable are the
user's choice and are not compared with anything. A file is read for its hash once per version
(``sha256_of``), so neither a run nor each ``statistics()`` re-reads 92 MB.

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
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor


@dataclass(frozen=True)
class WeightsSpec:
    """What is known of one weights file, and the names a user points to it with.

    Attributes:
        what: the file in messages, e.g. ``"FID Inception weights"``.
        url: where the official file is published; its file name (``name``) is the one torch hub caches it as.
        sha256: the official file's full hex SHA-256, or None where none is published (see the module
            docstring for what each case verifies).
        size: the official file's size in bytes, or None; known with ``sha256``.
        owner: the class whose ``argument`` takes a local file, e.g. ``"FrechetInceptionDistance"``.
        argument: that keyword argument, e.g. ``"feature_extractor_weights_path"``.
        env_path: the environment variable naming a local file.
        env_url: the environment variable naming a mirror's URL.
    """

    what: str
    url: str
    sha256: str | None
    size: int | None
    owner: str
    argument: str
    env_path: str
    env_url: str

    @property
    def name(self) -> str:
        """The file name in ``url``, e.g. ``pt_inception-2015-12-05-6726825d.pth``."""
        return _url_name(self.url)


# pytorch-fid's release file. Its name carries only 8 hex digits; the full digest is the one recorded next to this
# URL in genforce's Inception loader (e.g. snap-research/discoscene, models/inception_model.py,
# _MODEL_URL_SHA256["tf_inception_v3"]), and the size is the one public projects that pin this digest record.
INCEPTION = WeightsSpec(
    what="FID Inception weights",
    url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    size=95_628_359,
    owner="FrechetInceptionDistance",
    argument="feature_extractor_weights_path",
    env_path="FID_METRIC_WEIGHTS",
    env_url="FID_METRIC_WEIGHTS_URL",
)
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
    name = _url_name(url)
    match = _HASH_IN_NAME.search(name)
    if match is None:
        raise ValueError(
            f"The weights URL {url!r} has no SHA-256 prefix in its file name, so the download could not be "
            f"verified. A mirror must name the file as torch hub does, e.g. {_hashed_example(name or 'weights')}."
        )
    return match.group(1)


def download(url: str, directory: str | os.PathLike) -> Path:
    """Download ``url`` into ``directory`` under its own file name, verified by the SHA-256 prefix in that name
    (``expected_hash_prefix``); bounded in time and atomic as ``resolve()``'s downloads.

    Raises:
        ValueError: the name carries no hash.
        RuntimeError: the bytes do not hash to it (nothing is kept).
        OSError, http.client.HTTPException: the server cannot be reached, is too slow, or breaks off.
    """
    return _download(url, Path(directory) / _url_name(url), expected_hash_prefix(url), size=None)


def resolve(path: str | os.PathLike | None = None, spec: WeightsSpec | None = None) -> Path:
    """A local copy of the file ``spec`` describes (None: ``INCEPTION``), downloading it if needed.

    The order and what is verified: see the module docstring.

    Raises:
        WeightsUnavailableError: the given file does not exist, or none was found and none could be
            downloaded; the message lists what was tried and how to supply the file.
    """
    spec = INCEPTION if spec is None else spec  # looked up per call, so that a replaced INCEPTION applies
    if path is not None:
        return _existing(spec, Path(path), spec.argument)
    if os.environ.get(spec.env_path):
        return _existing(spec, Path(os.environ[spec.env_path]), f"${spec.env_path}")
    mirror = os.environ.get(spec.env_url) or None
    tried = [f"{spec.argument}: not given", f"${spec.env_path}: not set"]
    for cached in _cache_candidates(spec, mirror):
        problem = _cache_problem(spec, cached)
        if problem is None:
            return cached
        tried.append(f"the torch hub cache: {cached} {problem}")
    url = mirror or (spec.url if spec.sha256 is not None else None)
    if url is None:
        tried.append(f"downloading: ${spec.env_url} not set, and {spec.url} has no published SHA-256 to verify by")
        raise WeightsUnavailableError(_unavailable(spec, tried))
    try:
        if spec.sha256 is not None:
            return _download(url, cache_dir() / spec.name, spec.sha256, spec.size)
        return _download(url, cache_dir() / _url_name(url), expected_hash_prefix(url), size=None)
    except (OSError, http.client.HTTPException, RuntimeError, ValueError) as err:  # URLError is an OSError
        tried.append(f"downloading {url}{f' (from ${spec.env_url})' if mirror else ''}: {err}")
        raise WeightsUnavailableError(_unavailable(spec, tried)) from err


def load_state_dict(path: str | os.PathLike, what: str = "Inception weights") -> dict[str, Tensor]:
    """Load a state dict with ``torch.load(weights_only=True)`` on the CPU; ``what`` names it in errors."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(f"Could not load {what} from {path}: {err}") from err
    if not isinstance(state, dict):
        raise RuntimeError(f"{what} file {path} holds a {type(state).__name__}, not a state dict.")
    return state


def _existing(spec: WeightsSpec, path: Path, source: str) -> Path:
    if not path.is_file():
        raise WeightsUnavailableError(
            f"{spec.what} file {path} (from {source}) does not exist: point {source} at a copy of {spec.url}."
        )
    return path


def _cache_candidates(spec: WeightsSpec, mirror: str | None) -> list[Path]:
    """Where the cache may hold the file: a mirror's name (only where no hash is known), then the published one."""
    names = [_url_name(mirror)] if mirror and spec.sha256 is None else []
    return [cache_dir() / name for name in dict.fromkeys([*filter(None, names), spec.name])]


def _cache_problem(spec: WeightsSpec, path: Path) -> str | None:
    """Why the cached ``path`` is not used (it is missing, or not the official file), or None to use it."""
    if not path.is_file():
        return "does not exist"
    if spec.sha256 is None:
        return None
    size = path.stat().st_size
    if size != spec.size:  # cheap, and spares reading a truncated copy
        return f"is not the official file ({size} bytes, not {spec.size})"
    digest = sha256_of(path)
    if digest != spec.sha256:
        return f"is not the official file (SHA-256 {digest}, not {spec.sha256})"
    return None


def _unavailable(spec: WeightsSpec, tried: list[str]) -> str:
    """The message of a failed ``resolve()``: what was ``tried``, then every way to supply the file."""
    local = f"/path/to/{spec.name}"
    published = spec.url if spec.sha256 is None else f"{spec.url} (SHA-256 {spec.sha256})"
    mirror = (
        f"a mirror whose file name carries the file's SHA-256 prefix (e.g. {_hashed_example(spec.name)})"
        if spec.sha256 is None
        else "a mirror of the same file"
    )
    return (
        f"Could not get the {spec.what}. Tried:\n"
        + "".join(f"  - {line}\n" for line in tried)
        + f"Fetch {published} on a machine with internet access and pass {spec.owner}({spec.argument}='{local}'), "
        f"or set {spec.env_path}={local}, or copy it to {cache_dir() / spec.name}; or set {spec.env_url} to {mirror}."
    )


def _hashed_example(name: str) -> str:
    """``name`` as torch hub names a download: ``dinov2_vitl14_pretrain-<sha256[:8]>.pth``."""
    path = Path(name)
    return f"{path.stem}-<sha256[:8]>{path.suffix}"


def _url_name(url: str) -> str:
    return Path(urllib.parse.urlparse(url).path).name


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
