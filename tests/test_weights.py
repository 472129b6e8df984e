"""Weights resolution, verified download and safe loading, against a real HTTP server on 127.0.0.1.

Every test runs with ``TORCH_HOME`` in its own temporary folder (so ``torch.hub.get_dir()`` and the weights
cache live there), without the variables of either file (``FID_METRIC_WEIGHTS``, ``FID_METRIC_DINOV2_WEIGHTS``
and their ``_URL``), ``FID_METRIC_DOWNLOAD_TIMEOUT`` or proxy variables, and with ``INCEPTION``'s URL pointed
at a closed local port: nothing here can reach any address but 127.0.0.1. The real weights are never at hand,
so tests that need "the official file" make a tiny state dict official by giving ``INCEPTION`` its hash and
size (the ``official`` fixture).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import http.client
import http.server
import io
import os
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers import PythonProcess

import fid_metric
from fid_metric._features import dinov2, weights, weights_cache
from fid_metric._features.inception import FIDInceptionV3
from fid_metric._features.weights import WeightsUnavailableError

_REAL_DEFAULT_URL = weights.INCEPTION.url  # read before any fixture patches it
_PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
_REPO = Path(__file__).resolve().parents[1]


@dataclass
class LocalServer:
    """A ThreadingHTTPServer on 127.0.0.1 serving ``routes`` (path -> bytes, int status, or a slow response)."""

    httpd: http.server.ThreadingHTTPServer
    routes: dict[str, object] = field(default_factory=dict)
    requests: collections.Counter = field(default_factory=collections.Counter)
    closing: threading.Event = field(default_factory=threading.Event)  # ends the slow responses

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def stop(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass(frozen=True)
class Truncated:
    """Serve ``data`` as a chunked response whose connection drops before the terminating chunk."""

    data: bytes


@dataclass(frozen=True)
class Trickle:
    """Announce all of ``data``, then send it one byte every ``interval_s`` seconds: slow, but never silent."""

    data: bytes
    interval_s: float


@dataclass(frozen=True)
class Stall:
    """Announce all of ``data``, send its first ``sent`` bytes, then nothing until the server stops."""

    data: bytes
    sent: int


def _make_handler(server: LocalServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            server.requests[self.path] += 1
            body = server.routes.get(self.path, 404)
            if isinstance(body, int):
                self.send_error(body)
            elif isinstance(body, Truncated):
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                half = body.data[: len(body.data) // 2]
                self.wfile.write(f"{len(body.data):x}\r\n".encode() + half)
                self.wfile.flush()
                self.close_connection = True
            elif isinstance(body, (Trickle, Stall)):
                self._send_headers(len(body.data))
                self.close_connection = True
                try:
                    if isinstance(body, Stall):
                        self.wfile.write(body.data[: body.sent])
                        self.wfile.flush()
                        server.closing.wait()
                        return
                    for i in range(len(body.data)):
                        if server.closing.wait(body.interval_s):
                            return
                        self.wfile.write(body.data[i : i + 1])
                        self.wfile.flush()
                except OSError:  # the client gave up and closed the connection: what the test wants
                    pass
            else:
                self._send_headers(len(body))
                self.wfile.write(body)

        def _send_headers(self, length: int) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.flush()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base class signature)
            pass

    return Handler


def _free_port() -> int:
    """A local port with nothing listening on it (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hashed_name(data: bytes, stem: str = "weights", suffix: str = ".pth") -> str:
    """torch.hub style file name: ``<stem>-<first 8 hex of sha256><suffix>``."""
    return f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}{suffix}"


def _mirror(data: bytes) -> str:
    """The path of ``data`` on a mirror that kept torch.hub's naming (the hash prefix in the name)."""
    return f"/mirror/{_hashed_name(data)}"


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _cache_listing() -> list[str]:
    """Every entry in the cache folder, hidden temporary files and sidecars included."""
    directory = weights.cache_dir()
    return sorted(os.listdir(directory)) if directory.exists() else []


def _only_weights_in_cache() -> list[str]:
    """What the cache must hold after a good download: the file and its recorded hash, no ``.partial``."""
    return sorted([weights.INCEPTION.name, f".{weights.INCEPTION.name}.sha256"])


def _make_official(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    """Make ``data`` the official file: resolve() and the cache then accept exactly these bytes."""
    official = dataclasses.replace(weights.INCEPTION, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    monkeypatch.setattr(weights, "INCEPTION", official)


def _count_hashing(monkeypatch: pytest.MonkeyPatch) -> collections.Counter:
    """Count the SHA-256 objects made from now on: each full read of a file for its hash makes one."""
    made: collections.Counter = collections.Counter()
    real = hashlib.sha256

    def counting(*args: object, **kwargs: object) -> object:
        made["sha256"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "sha256", counting)
    return made


class NotAStateDict:
    """A custom class: unpickling it needs arbitrary code, which ``weights_only=True`` must refuse."""

    def __init__(self) -> None:
        self.w = torch.arange(3.0)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TORCH_HOME in tmp, no weights/proxy/timeout variables, and a default URL that can only fail locally."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # in case anything called torch.hub.set_dir()
    for spec in (weights.INCEPTION, dinov2.DINOV2):
        monkeypatch.delenv(spec.env_path, raising=False)
        monkeypatch.delenv(spec.env_url, raising=False)
    monkeypatch.delenv("FID_METRIC_DOWNLOAD_TIMEOUT", raising=False)
    for var in _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    dead = f"http://127.0.0.1:{_free_port()}/{weights.INCEPTION.name}"
    monkeypatch.setattr(weights, "INCEPTION", dataclasses.replace(weights.INCEPTION, url=dead))
    return tmp_path / "torch_home"


@pytest.fixture
def server() -> Iterator[LocalServer]:
    """A running local HTTP server on an ephemeral 127.0.0.1 port, shut down at teardown."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    httpd.daemon_threads = True
    httpd.timeout = 5
    srv = LocalServer(httpd)
    httpd.RequestHandlerClass = _make_handler(srv)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    if thread.is_alive():
        srv.stop()
    thread.join(timeout=5)


@pytest.fixture
def small_weights() -> tuple[bytes, str]:
    """Bytes of a tiny real state dict file and its hash-prefixed file name."""
    data = _saved({"w": torch.arange(5.0)})
    return data, _hashed_name(data)


@pytest.fixture
def official(small_weights: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch) -> bytes:
    """The tiny state dict's bytes, made the official file (see ``_make_official``)."""
    _make_official(monkeypatch, small_weights[0])
    return small_weights[0]


def test_torch_home_sets_cache_dir(isolated_env: Path) -> None:
    """torch.hub.get_dir() follows TORCH_HOME, so the weights cache is TORCH_HOME/hub/checkpoints."""
    assert Path(torch.hub.get_dir()) == isolated_env / "hub"
    assert weights.cache_dir() == isolated_env / "hub" / "checkpoints"


def test_default_url_name_carries_hash() -> None:
    """The real default URL (never fetched) is pytorch-fid's file; its name's hash prefix is the official one's."""
    assert Path(_REAL_DEFAULT_URL).name == weights.INCEPTION.name == "pt_inception-2015-12-05-6726825d.pth"
    assert weights.expected_hash_prefix(_REAL_DEFAULT_URL) == "6726825d"
    assert len(weights.INCEPTION.sha256) == 64
    assert weights.INCEPTION.sha256.startswith(weights.expected_hash_prefix(_REAL_DEFAULT_URL))


def test_download_success(
    server: LocalServer, small_weights: tuple[bytes, str], official: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """resolve() downloads from $FID_METRIC_WEIGHTS_URL into the cache, byte-identical; it loads as a dict."""
    _, name = small_weights
    server.routes[f"/mirror/{name}"] = official
    monkeypatch.setenv(weights.INCEPTION.env_url, server.url(f"/mirror/{name}"))

    path = weights.resolve()

    assert path == weights.cache_dir() / weights.INCEPTION.name
    assert path.read_bytes() == official
    assert _cache_listing() == _only_weights_in_cache()  # no temporary file left beside it
    assert server.requests[f"/mirror/{name}"] == 1
    state = weights.load_state_dict(path)
    assert set(state) == {"w"}
    assert torch.equal(state["w"], torch.arange(5.0))


def test_cache_reused(server: LocalServer, official: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second resolve() returns the cached file without a new request, even with the server gone."""
    server.routes[_mirror(official)] = official
    monkeypatch.setenv(weights.INCEPTION.env_url, server.url(_mirror(official)))
    first = weights.resolve()
    assert server.requests[_mirror(official)] == 1

    second = weights.resolve()
    server.stop()
    third = weights.resolve()

    assert first == second == third
    assert sum(server.requests.values()) == 1
    assert third.read_bytes() == official


def test_corrupt_download_leaves_nothing(
    server: LocalServer, small_weights: tuple[bytes, str], official: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes not matching the official hash raise, keep no file or .partial; a good retry then works."""
    _, name = small_weights
    server.routes[f"/{name}"] = official[:-1] + bytes([official[-1] ^ 0xFF])  # same size, one byte differs
    monkeypatch.setenv(weights.INCEPTION.env_url, server.url(f"/{name}"))

    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve()
    message = str(info.value)
    assert "corrupt" in message
    assert "SHA-256" in message
    assert weights.INCEPTION.sha256 in message
    assert isinstance(info.value.__cause__, RuntimeError)
    assert weights.cache_dir().is_dir()  # the folder was created, so the listing below is meaningful
    assert _cache_listing() == []

    server.routes[f"/{name}"] = official
    path = weights.resolve()
    assert path.read_bytes() == official
    assert _cache_listing() == _only_weights_in_cache()
    assert server.requests[f"/{name}"] == 2


def test_truncated_download_leaves_nothing(
    server: LocalServer, official: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection dropped mid-download gives WeightsUnavailableError and leaves no file or .partial."""
    server.routes[_mirror(official)] = Truncated(official)
    monkeypatch.setenv(weights.INCEPTION.env_url, server.url(_mirror(official)))

    with pytest.raises(WeightsUnavailableError, match="Could not get the FID Inception weights") as info:
        weights.resolve()
    assert isinstance(info.value.__cause__, http.client.HTTPException)
    assert server.requests[_mirror(official)] == 1
    assert _cache_listing() == []


def test_wrong_announced_size_refused(server: LocalServer, official: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A response announcing another size than the official file's is refused before its body is saved."""
    server.routes[_mirror(official)] = official + b"\0"
    monkeypatch.setenv(weights.INCEPTION.env_url, server.url(_mirror(official)))

    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve()
    assert f"announces {len(official) + 1} bytes" in str(info.value)
    assert str(len(official)) in str(info.value)
    assert _cache_listing() == []


def test_mirror_verified_against_official_hash(
    server: LocalServer, official: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mirror's file whose name carries its own (correct) hash prefix, but is not the official file, is refused."""
    other = _saved({"w": torch.arange(5.0) + 1})
    assert len(other) == len(official)  # the same size, so only the hash can tell them apart
    name = _hashed_name(other, stem="pt_inception-2015-12-05")
    server.routes[f"/{name}"] = other
    monkeypatch.setenv(weights.INCEPTION.env_url, server.url(f"/{name}"))

    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve()
    assert weights.INCEPTION.sha256 in str(info.value)
    assert server.requests[f"/{name}"] == 1
    assert _cache_listing() == []


@pytest.mark.parametrize("name", ["weights.pth", "pt_inception-2015-12-05.pth", "weights-ABCDEF12.pth", "x"])
def test_mirror_name_needs_no_hash(
    server: LocalServer, official: bytes, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The official bytes from a mirror under any name are accepted and cached under the canonical name."""
    server.routes[f"/{name}"] = official
    monkeypatch.setenv(weights.INCEPTION.env_url, server.url(f"/{name}"))

    assert weights.resolve() == weights.cache_dir() / weights.INCEPTION.name
    assert _cache_listing() == _only_weights_in_cache()


@pytest.mark.parametrize("name", ["weights.pth", "pt_inception-2015-12-05.pth", "weights-ABCDEF12.pth", ""])
def test_mirror_without_hash_in_name_refused_where_no_hash_is_known(
    server: LocalServer, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file without a known hash (DINOv2) is verified by the mirror name's lowercase-hex SHA-256 prefix: none,
    no request."""
    server.routes[f"/{name}"] = _saved({"w": torch.arange(5.0)})
    url = server.url(f"/{name}")
    monkeypatch.setenv(dinov2.DINOV2.env_url, url)

    with pytest.raises(ValueError, match="no SHA-256 prefix"):
        weights.expected_hash_prefix(url)
    with pytest.raises(WeightsUnavailableError, match="no SHA-256 prefix") as info:
        weights.resolve(spec=dinov2.DINOV2)
    assert isinstance(info.value.__cause__, ValueError)
    assert info.match("must name the file as torch hub does")
    assert sum(server.requests.values()) == 0
    assert _cache_listing() == []


def test_cached_file_is_verified(server: LocalServer, official: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file under the canonical cache name that is not the official one is not used, and a download replaces it."""
    cached = weights.cache_dir() / weights.INCEPTION.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(official[:-1] + bytes([official[-1] ^ 0xFF]))  # same size: only the hash can tell

    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve()  # the default URL is a closed port: nothing can replace it
    assert f"{cached} is not the official file" in str(info.value)
    assert weights.INCEPTION.sha256 in str(info.value)

    server.routes[_mirror(official)] = official
    monkeypatch.setenv(weights.INCEPTION.env_url, server.url(_mirror(official)))
    assert weights.resolve() == cached
    assert cached.read_bytes() == official
    assert server.requests[_mirror(official)] == 1


def test_cached_file_hashed_once(tmp_path: Path, official: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache file is hashed once, not on every resolve()/sha256_of() nor in the next process; a change re-hashes."""
    cached = weights.cache_dir() / weights.INCEPTION.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(official)
    made = _count_hashing(monkeypatch)

    for _ in range(3):
        assert weights.resolve() == cached
        assert weights.sha256_of(cached) == weights.INCEPTION.sha256
    assert made["sha256"] == 1

    monkeypatch.setattr(weights_cache, "_known_hashes", {})  # what a new process starts with
    assert weights.resolve() == cached
    assert weights.sha256_of(cached) == weights.INCEPTION.sha256
    assert made["sha256"] == 1  # read from the record beside the file

    stat = cached.stat()
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched: maybe rewritten
    assert weights.resolve() == cached
    assert made["sha256"] == 2


def test_sha256_of_remembers_other_files_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file outside the cache is hashed once per version in a process, and nothing is written beside it."""
    path = tmp_path / "mine" / "weights.pth"
    path.parent.mkdir()
    path.write_bytes(b"first")
    first, second = hashlib.sha256(b"first").hexdigest(), hashlib.sha256(b"other").hexdigest()
    made = _count_hashing(monkeypatch)

    assert weights.sha256_of(path) == weights.sha256_of(str(path)) == weights.sha256_of(path.resolve()) == first
    assert made["sha256"] == 1
    assert os.listdir(path.parent) == ["weights.pth"]

    stat = path.stat()
    path.write_bytes(b"other")  # same size; set the time too, as a later write would (clocks are coarse)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert weights.sha256_of(path) == second
    assert made["sha256"] == 2


def _resolve_within(seconds: float) -> BaseException:
    """The exception resolve() raises, failing the test if it has not returned after ``seconds``.

    Runs it in a thread so that a download that would hang fails the test quickly; the server's teardown
    then ends the slow response and the thread with it.
    """
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(weights.resolve)
    pool.shutdown(wait=False)
    try:
        future.result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        pytest.fail(f"resolve() was still downloading after {seconds} s")
    except Exception as err:  # noqa: BLE001 (the caller checks what it is)
        return err
    pytest.fail("resolve() returned instead of raising")


@pytest.mark.parametrize("slow", ["trickle", "stall"])
def test_download_deadline(server: LocalServer, official: bytes, slow: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """$FID_METRIC_DOWNLOAD_TIMEOUT bounds the whole download: a trickling or stalled server cannot hold it."""
    deadline_s, interval_s = 0.5, 0.05
    # The trickle alone would take len * interval, the stall the 60 s read timeout: both far past the bound.
    bound_s = 5  # deadline + one interval, with room for a loaded 2-core machine
    assert len(official) * interval_s > 4 * bound_s
    server.routes[_mirror(official)] = Trickle(official, interval_s) if slow == "trickle" else Stall(official, sent=10)
    monkeypatch.setenv(weights.INCEPTION.env_url, server.url(_mirror(official)))
    monkeypatch.setenv("FID_METRIC_DOWNLOAD_TIMEOUT", str(deadline_s))

    started = time.monotonic()
    err = _resolve_within(bound_s)
    elapsed = time.monotonic() - started

    assert elapsed >= deadline_s
    assert isinstance(err, WeightsUnavailableError)
    assert isinstance(err.__cause__, TimeoutError)
    message = str(err)
    assert f"within {deadline_s:g} s" in message
    assert "FID_METRIC_DOWNLOAD_TIMEOUT" in message
    assert _REAL_DEFAULT_URL.rsplit("/", 1)[1] in message  # how to fetch the file by hand
    assert "feature_extractor_weights_path" in message
    assert _cache_listing() == []


@pytest.mark.parametrize("value", ["soon", "0", "-3", "nan"])
def test_download_timeout_must_be_positive_seconds(
    server: LocalServer, official: bytes, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A malformed $FID_METRIC_DOWNLOAD_TIMEOUT is refused, naming it and what it expects, before any request."""
    server.routes[_mirror(official)] = official
    monkeypatch.setenv(weights.INCEPTION.env_url, server.url(_mirror(official)))
    monkeypatch.setenv("FID_METRIC_DOWNLOAD_TIMEOUT", value)

    with pytest.raises(WeightsUnavailableError, match=r"FID_METRIC_DOWNLOAD_TIMEOUT must be a number of seconds > 0"):
        weights.resolve()
    assert sum(server.requests.values()) == 0


def _partials() -> list[str]:
    return [name for name in _cache_listing() if name.endswith(".partial")]


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    stop = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > stop:
            pytest.fail(f"no {what} after {seconds} s")
        time.sleep(0.05)


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name == "nt", reason="POSIX signals")
def test_partial_of_a_terminated_download_removed_by_next_download(
    server: LocalServer, official: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed by SIGTERM mid-download leaves a .partial; the next download removes it."""
    server.routes["/slow" + _mirror(official)] = Stall(official, sent=10)
    server.routes[_mirror(official)] = official
    env = {weights.INCEPTION.env_url: server.url("/slow" + _mirror(official))}
    code = (  # the child makes the same bytes official, so that only the signal stops its download
        "import dataclasses; from fid_metric._features import weights; weights.INCEPTION = dataclasses.replace("
        f"weights.INCEPTION, sha256={weights.INCEPTION.sha256!r}, size={weights.INCEPTION.size}); weights.resolve()"
    )
    child = PythonProcess("-c", code, **env)
    try:
        _wait_for(lambda: bool(_partials()) or child.returncode is not None, 120, "partial file from the child")
        assert child.returncode is None, child.wait(0).stderr[-4000:]
        time.sleep(0.2)  # let it write the bytes it has
    finally:
        child.send_signal(signal.SIGTERM)
    assert child.wait(30).returncode == -signal.SIGTERM
    (left,) = _partials()  # a SIGTERM runs no clean-up: the file stays until someone removes it

    monkeypatch.setenv(weights.INCEPTION.env_url, server.url(_mirror(official)))
    assert weights.resolve().read_bytes() == official
    assert _cache_listing() == _only_weights_in_cache()


def test_stale_partials_removed_live_ones_kept(
    server: LocalServer, official: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before a download, .partial files of dead processes on this host, and of any host that has not written
    for over an hour, are removed; those of live processes, recent ones of other hosts and other files stay."""
    directory = weights.cache_dir()
    directory.mkdir(parents=True)
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()  # its pid names no process now
    host, stem = socket.gethostname(), f".{weights.INCEPTION.name}"
    names = {
        "dead here": f"{stem}.{host}.{exited.pid}.abc_12.partial",
        "live here": f"{stem}.{host}.{os.getpid()}.def_34.partial",
        "recent elsewhere": f"{stem}.other-node.example.7.ghi_56.partial",
        "old elsewhere": f"{stem}.other-node.example.8.jkl_78.partial",
        "another file's": f".other-weights.pth.{host}.{exited.pid}.mno_90.partial",
        "not a partial": f"{stem}.{host}.{exited.pid}.pqr_12.tmp",
    }
    for name in names.values():
        (directory / name).write_bytes(b"part")
    old = time.time() - 2 * 3600  # the rule: no write for over an hour
    os.utime(directory / names["old elsewhere"], (old, old))
    server.routes[_mirror(official)] = official
    monkeypatch.setenv(weights.INCEPTION.env_url, server.url(_mirror(official)))

    weights.resolve()

    kept = {what for what, name in names.items() if (directory / name).exists()}
    assert kept == {"live here", "recent elsewhere", "another file's", "not a partial"}


@pytest.fixture(params=["inception", "dinov2"])
def spec(request: pytest.FixtureRequest, official: bytes) -> weights.WeightsSpec:
    """Each file the one resolver serves; the tiny state dict is the official Inception file."""
    return weights.INCEPTION if request.param == "inception" else dinov2.DINOV2


def _other(spec: weights.WeightsSpec) -> weights.WeightsSpec:
    return dinov2.DINOV2 if spec.env_path == weights.INCEPTION.env_path else weights.INCEPTION


def test_each_spec_argument_then_its_own_variable(
    spec: weights.WeightsSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """resolve(path, spec) takes the argument, then spec's variable (not the other file's), and names a missing one."""
    explicit, from_env = tmp_path / "explicit.pth", tmp_path / "from_env.pth"
    explicit.write_bytes(b"explicit")
    from_env.write_bytes(b"from env")

    monkeypatch.setenv(_other(spec).env_path, str(from_env))
    with pytest.raises(WeightsUnavailableError, match="Tried:"):  # the cache is empty, no download can work
        weights.resolve(spec=spec)
    monkeypatch.setenv(spec.env_path, str(from_env))
    assert weights.resolve(spec=spec) == from_env
    assert weights.resolve(explicit, spec) == explicit

    missing = tmp_path / "gone.pth"
    monkeypatch.setenv(spec.env_path, str(missing))
    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve(spec=spec)
    assert f"{spec.what} file {missing} (from ${spec.env_path}) does not exist" in str(info.value)
    assert spec.url in str(info.value)
    with pytest.raises(WeightsUnavailableError, match=rf"\(from {spec.argument}\) does not exist"):
        weights.resolve(missing, spec)


def test_each_spec_found_in_the_cache_under_its_name(
    spec: weights.WeightsSpec, server: LocalServer, official: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no argument or variable, resolve(spec=spec) takes spec's file in torch hub's cache before a mirror."""
    server.routes[_mirror(official)] = official
    monkeypatch.setenv(spec.env_url, server.url(_mirror(official)))
    cached = weights.cache_dir() / spec.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(official)

    assert weights.resolve(spec=spec) == cached
    assert sum(server.requests.values()) == 0


def test_each_spec_error_names_its_own_ways_out(spec: weights.WeightsSpec) -> None:
    """When nothing works, the message lists spec's argument, variables, cache entry and URL, not the other's."""
    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve(spec=spec)
    message = str(info.value)
    for expected in (
        f"Could not get the {spec.what}. Tried:",
        f"  - {spec.argument}: not given",
        f"  - ${spec.env_path}: not set",
        f"{weights.cache_dir() / spec.name} does not exist",
        spec.url,
        f"{spec.owner}({spec.argument}='/path/to/{spec.name}')",
        f"{spec.env_path}=/path/to/{spec.name}",
        f"set {spec.env_url} to a mirror",
    ):
        assert expected in message
    other = _other(spec)
    assert other.env_path not in message
    assert other.env_url not in message
    assert f"{other.owner}(" not in message


def _assert_helpful(message: str, url: str) -> None:
    """The error says what was tried and how to supply the file offline."""
    assert "Tried:" in message
    assert url in message
    assert "feature_extractor_weights_path" in message
    assert weights.INCEPTION.env_path in message
    assert "does not exist" in message  # the cache entry that was looked for
    assert str(weights.cache_dir()) in message


def test_unreachable_url(small_weights: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A URL on a closed local port gives a WeightsUnavailableError naming both offline options."""
    _, name = small_weights
    url = f"http://127.0.0.1:{_free_port()}/{name}"
    monkeypatch.setenv(weights.INCEPTION.env_url, url)

    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve()
    _assert_helpful(str(info.value), url)
    assert f"(from ${weights.INCEPTION.env_url})" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert _cache_listing() == []


def test_default_url_used_without_env(small_weights: tuple[bytes, str]) -> None:
    """With no variables set, resolve() tries INCEPTION.url (patched to a closed local port) and says so."""
    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve()
    message = str(info.value)
    _assert_helpful(message, weights.INCEPTION.url)
    assert f"(from ${weights.INCEPTION.env_url})" not in message
    assert _cache_listing() == []


def test_http_404(server: LocalServer, small_weights: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A 404 from the mirror gives the same helpful error, mentions the 404, and caches nothing."""
    _, name = small_weights
    url = server.url(f"/missing/{name}")
    monkeypatch.setenv(weights.INCEPTION.env_url, url)

    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve()
    _assert_helpful(str(info.value), url)
    assert "404" in str(info.value)
    assert server.requests[f"/missing/{name}"] == 1
    assert _cache_listing() == []


def test_precedence(tmp_path: Path, server: LocalServer, official: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit path beats $FID_METRIC_WEIGHTS, which beats the cache, which beats a download."""
    server.routes[_mirror(official)] = official
    monkeypatch.setenv(weights.INCEPTION.env_url, server.url(_mirror(official)))
    explicit = tmp_path / "explicit.pth"
    explicit.write_bytes(_saved({"w": torch.zeros(1)}))
    from_env = tmp_path / "from_env.pth"
    from_env.write_bytes(_saved({"w": torch.ones(1)}))
    cached = weights.cache_dir() / weights.INCEPTION.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(official)

    monkeypatch.setenv(weights.INCEPTION.env_path, str(from_env))
    assert weights.resolve(explicit) == explicit
    assert weights.resolve(str(explicit)) == explicit
    assert weights.resolve() == from_env
    monkeypatch.delenv(weights.INCEPTION.env_path)
    assert weights.resolve() == cached
    assert sum(server.requests.values()) == 0  # nothing was downloaded in any of these

    cached.unlink()
    assert weights.resolve() == cached
    assert server.requests[_mirror(official)] == 1


def test_missing_explicit_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing explicit path raises naming it, and does not fall back to $FID_METRIC_WEIGHTS."""
    present = tmp_path / "present.pth"
    present.write_bytes(_saved({"w": torch.ones(1)}))
    monkeypatch.setenv(weights.INCEPTION.env_path, str(present))
    missing = tmp_path / "nope.pth"

    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve(missing)
    assert str(missing) in str(info.value)
    assert "feature_extractor_weights_path" in str(info.value)


def test_missing_env_weights(
    tmp_path: Path, server: LocalServer, small_weights: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing $FID_METRIC_WEIGHTS file raises naming it and the variable, without trying the URL."""
    _, name = small_weights
    server.routes[f"/{name}"] = small_weights[0]
    monkeypatch.setenv(weights.INCEPTION.env_url, server.url(f"/{name}"))
    missing = tmp_path / "gone.pth"
    monkeypatch.setenv(weights.INCEPTION.env_path, str(missing))

    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve()
    assert str(missing) in str(info.value)
    assert weights.INCEPTION.env_path in str(info.value)
    assert sum(server.requests.values()) == 0


def test_load_refuses_pickled_objects(tmp_path: Path) -> None:
    """load_state_dict uses weights_only=True: a pickled custom class is refused, its code never runs."""
    path = tmp_path / "evil.pth"
    torch.save({"w": NotAStateDict()}, path)
    assert isinstance(torch.load(path, weights_only=False)["w"], NotAStateDict)  # the file itself is valid

    with pytest.raises(RuntimeError) as info:
        weights.load_state_dict(path)
    assert str(path) in str(info.value)
    assert "NotAStateDict" in str(info.value)
    assert isinstance(info.value.__cause__, Exception)


def test_load_refuses_non_dict(tmp_path: Path) -> None:
    """A file holding a tensor (not a dict) is rejected with a message saying what it holds."""
    path = tmp_path / "tensor.pth"
    torch.save(torch.arange(3.0), path)

    with pytest.raises(RuntimeError, match="holds a Tensor, not a state dict"):
        weights.load_state_dict(path)


def test_load_refuses_garbage(tmp_path: Path) -> None:
    """A file that is not a torch checkpoint at all gives an error naming the file."""
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a checkpoint")

    with pytest.raises(RuntimeError, match="Could not load Inception weights from"):
        weights.load_state_dict(path)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    """Bytes and hash-prefixed name of a random-init FIDInceptionV3 state dict (the real layout)."""
    torch.manual_seed(0)
    data = _saved(FIDInceptionV3().state_dict())
    return data, _hashed_name(data, stem="pt_inception-2015-12-05")


def test_metric_end_to_end(
    server: LocalServer, inception_file: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """FrechetInceptionDistance() with no path downloads from the mirror into the cache, then reuses it."""
    data, name = inception_file
    _make_official(monkeypatch, data)
    server.routes[f"/{name}"] = data
    monkeypatch.setenv(weights.INCEPTION.env_url, server.url(f"/{name}"))

    metric = fid_metric.FrechetInceptionDistance(feature=64)

    cached = weights.cache_dir() / weights.INCEPTION.name
    assert cached.read_bytes() == data
    assert _cache_listing() == _only_weights_in_cache()
    assert server.requests[f"/{name}"] == 1
    expected = torch.load(io.BytesIO(data), weights_only=True)["fc.weight"]  # convolutions are BN-folded
    assert torch.equal(metric._extractor.module.fc.weight, expected)

    server.stop()
    again = fid_metric.FrechetInceptionDistance(feature=64)
    assert server.requests[f"/{name}"] == 1
    assert torch.equal(again._extractor.module.fc.weight, expected)


@pytest.mark.parametrize(
    "example, args",
    [
        ("gan_digits.py", "--epochs 1 --val-samples 8 --batch-size 8 --max-train-batches 1 --reference-images 8"),
        ("lightning_tensorboard.py", "--epochs 1 --train-images 8 --val-images 8 --batch-size 8"),
    ],
)
def test_example_without_weights_says_so_in_one_line(
    tmp_path: Path, example: str, args: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline with no weights, an example ends with one line naming --inception-weights, not a traceback.

    Run as ``__main__`` in this process (runpy): what the interpreter would print is the ``SystemExit`` message,
    and an uncaught exception would be the traceback. A fresh interpreter would import Lightning anew.
    """
    # offline: nothing listens
    monkeypatch.setenv(weights.INCEPTION.env_url, f"http://127.0.0.1:{_free_port()}/{weights.INCEPTION.name}")
    monkeypatch.chdir(tmp_path)
    script = _REPO / "examples" / example
    argv = [str(script), *args.split(), "--feature", "64", "--accelerator", "cpu", "--logdir", str(tmp_path / "logs")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")

    message = exit_info.value.code
    assert isinstance(message, str), f"exit code {message!r}, not a message (the interpreter would exit 1 with it)"
    assert len(message.splitlines()) == 1 and "--inception-weights" in message, message
    assert "urlopen error" in message  # why: the download could not connect
