"""Weights resolution, verified download and safe loading, against a real HTTP server on 127.0.0.1.

Every test runs with ``TORCH_HOME`` in its own temporary folder (so ``torch.hub.get_dir()`` and the weights
cache live there), without ``FID_METRIC_WEIGHTS``/``FID_METRIC_WEIGHTS_URL``/proxy variables, and with the
module's default URL pointed at a closed local port: nothing here can reach any address but 127.0.0.1.
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import http.server
import io
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import fid_metric
from fid_metric import weights
from fid_metric.inception import FIDInceptionV3
from fid_metric.weights import WeightsUnavailableError

_REAL_DEFAULT_URL = weights.DEFAULT_URL  # read before any fixture patches it
_PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


@dataclass
class LocalServer:
    """A ThreadingHTTPServer on 127.0.0.1 serving ``routes`` (path -> bytes, int status, or ``Truncated``)."""

    httpd: http.server.ThreadingHTTPServer
    routes: dict[str, object] = field(default_factory=dict)
    requests: collections.Counter = field(default_factory=collections.Counter)

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass(frozen=True)
class Truncated:
    """Serve ``data`` as a chunked response whose connection drops before the terminating chunk."""

    data: bytes


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
            else:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

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


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _cache_listing() -> list[str]:
    """Every entry in the cache folder, hidden temporary files included."""
    directory = weights.cache_dir()
    return sorted(os.listdir(directory)) if directory.exists() else []


class NotAStateDict:
    """A custom class: unpickling it needs arbitrary code, which ``weights_only=True`` must refuse."""

    def __init__(self) -> None:
        self.w = torch.arange(3.0)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TORCH_HOME in tmp, no weights/proxy variables, and a default URL that can only fail locally."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # in case anything called torch.hub.set_dir()
    monkeypatch.delenv(weights.ENV_WEIGHTS, raising=False)
    monkeypatch.delenv(weights.ENV_URL, raising=False)
    for var in _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    dead = f"http://127.0.0.1:{_free_port()}/{Path(weights.DEFAULT_URL).name}"
    monkeypatch.setattr(weights, "DEFAULT_URL", dead)
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


def test_torch_home_sets_cache_dir(isolated_env: Path) -> None:
    """torch.hub.get_dir() follows TORCH_HOME, so the weights cache is TORCH_HOME/hub/checkpoints."""
    assert Path(torch.hub.get_dir()) == isolated_env / "hub"
    assert weights.cache_dir() == isolated_env / "hub" / "checkpoints"


def test_default_url_name_carries_hash() -> None:
    """The real default URL (a constant here, never fetched) is pytorch-fid's file and names its hash."""
    assert Path(_REAL_DEFAULT_URL).name == "pt_inception-2015-12-05-6726825d.pth"
    assert weights.expected_hash_prefix(_REAL_DEFAULT_URL) == "6726825d"


def test_download_success(
    server: LocalServer, small_weights: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """resolve() downloads from $FID_METRIC_WEIGHTS_URL into the cache, byte-identical; it loads as a dict."""
    data, name = small_weights
    server.routes[f"/mirror/{name}"] = data
    monkeypatch.setenv(weights.ENV_URL, server.url(f"/mirror/{name}"))

    path = weights.resolve()

    assert path == weights.cache_dir() / name
    assert path.read_bytes() == data
    assert _cache_listing() == [name]  # no temporary file left beside it
    assert server.requests[f"/mirror/{name}"] == 1
    state = weights.load_state_dict(path)
    assert set(state) == {"w"}
    assert torch.equal(state["w"], torch.arange(5.0))


def test_cache_reused(server: LocalServer, small_weights: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A second resolve() returns the cached file without a new request, even with the server gone."""
    data, name = small_weights
    server.routes[f"/{name}"] = data
    monkeypatch.setenv(weights.ENV_URL, server.url(f"/{name}"))
    first = weights.resolve()
    assert server.requests[f"/{name}"] == 1

    second = weights.resolve()
    server.stop()
    third = weights.resolve()

    assert first == second == third
    assert sum(server.requests.values()) == 1
    assert third.read_bytes() == data


def test_corrupt_download_leaves_nothing(
    server: LocalServer, small_weights: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes not matching the hash in the name raise, keep no file or .partial; a good retry then works."""
    data, name = small_weights
    server.routes[f"/{name}"] = data[:-1] + bytes([data[-1] ^ 0xFF])
    monkeypatch.setenv(weights.ENV_URL, server.url(f"/{name}"))

    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve()
    message = str(info.value)
    assert "corrupt" in message
    assert "SHA-256" in message
    assert name.rsplit("-", 1)[1].split(".")[0] in message  # the expected prefix
    assert isinstance(info.value.__cause__, RuntimeError)
    assert weights.cache_dir().is_dir()  # the folder was created, so the listing below is meaningful
    assert _cache_listing() == []

    server.routes[f"/{name}"] = data
    path = weights.resolve()
    assert path.read_bytes() == data
    assert _cache_listing() == [name]
    assert server.requests[f"/{name}"] == 2


def test_truncated_download_leaves_nothing(
    server: LocalServer, small_weights: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection dropped mid-download gives WeightsUnavailableError and leaves no file or .partial."""
    data, name = small_weights
    server.routes[f"/{name}"] = Truncated(data)
    monkeypatch.setenv(weights.ENV_URL, server.url(f"/{name}"))

    with pytest.raises(WeightsUnavailableError, match="Could not get the FID Inception weights") as info:
        weights.resolve()
    assert isinstance(info.value.__cause__, http.client.HTTPException)
    assert server.requests[f"/{name}"] == 1
    assert _cache_listing() == []


def _assert_helpful(message: str, url: str) -> None:
    """The error says what was tried and how to supply the file offline."""
    assert "Tried:" in message
    assert url in message
    assert "feature_extractor_weights_path" in message
    assert weights.ENV_WEIGHTS in message
    assert "does not exist" in message  # the cache entry that was looked for
    assert str(weights.cache_dir()) in message


def test_unreachable_url(small_weights: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A URL on a closed local port gives a WeightsUnavailableError naming both offline options."""
    _, name = small_weights
    url = f"http://127.0.0.1:{_free_port()}/{name}"
    monkeypatch.setenv(weights.ENV_URL, url)

    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve()
    _assert_helpful(str(info.value), url)
    assert f"(from ${weights.ENV_URL})" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert _cache_listing() == []


def test_default_url_used_without_env(small_weights: tuple[bytes, str]) -> None:
    """With no variables set, resolve() tries DEFAULT_URL (patched to a closed local port) and says so."""
    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve()
    message = str(info.value)
    _assert_helpful(message, weights.DEFAULT_URL)
    assert f"(from ${weights.ENV_URL})" not in message
    assert _cache_listing() == []


def test_http_404(server: LocalServer, small_weights: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A 404 from the mirror gives the same helpful error, mentions the 404, and caches nothing."""
    _, name = small_weights
    url = server.url(f"/missing/{name}")
    monkeypatch.setenv(weights.ENV_URL, url)

    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve()
    _assert_helpful(str(info.value), url)
    assert "404" in str(info.value)
    assert server.requests[f"/missing/{name}"] == 1
    assert _cache_listing() == []


def test_precedence(
    tmp_path: Path, server: LocalServer, small_weights: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Explicit path beats $FID_METRIC_WEIGHTS, which beats the cache, which beats a download."""
    data, name = small_weights
    server.routes[f"/{name}"] = data
    monkeypatch.setenv(weights.ENV_URL, server.url(f"/{name}"))
    explicit = tmp_path / "explicit.pth"
    explicit.write_bytes(_saved({"w": torch.zeros(1)}))
    from_env = tmp_path / "from_env.pth"
    from_env.write_bytes(_saved({"w": torch.ones(1)}))
    cached = weights.cache_dir() / name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data)

    monkeypatch.setenv(weights.ENV_WEIGHTS, str(from_env))
    assert weights.resolve(explicit) == explicit
    assert weights.resolve(str(explicit)) == explicit
    assert weights.resolve() == from_env
    monkeypatch.delenv(weights.ENV_WEIGHTS)
    assert weights.resolve() == cached
    assert sum(server.requests.values()) == 0  # nothing was downloaded in any of these

    cached.unlink()
    assert weights.resolve() == cached
    assert server.requests[f"/{name}"] == 1


def test_missing_explicit_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing explicit path raises naming it, and does not fall back to $FID_METRIC_WEIGHTS."""
    present = tmp_path / "present.pth"
    present.write_bytes(_saved({"w": torch.ones(1)}))
    monkeypatch.setenv(weights.ENV_WEIGHTS, str(present))
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
    monkeypatch.setenv(weights.ENV_URL, server.url(f"/{name}"))
    missing = tmp_path / "gone.pth"
    monkeypatch.setenv(weights.ENV_WEIGHTS, str(missing))

    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve()
    assert str(missing) in str(info.value)
    assert weights.ENV_WEIGHTS in str(info.value)
    assert sum(server.requests.values()) == 0


@pytest.mark.parametrize("name", ["weights.pth", "pt_inception-2015-12-05.pth", "weights-ABCDEF12.pth", ""])
def test_url_without_hash_refused(server: LocalServer, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A URL whose file name has no lowercase-hex SHA-256 prefix is refused before any request."""
    data = _saved({"w": torch.arange(5.0)})
    server.routes[f"/{name}"] = data
    url = server.url(f"/{name}")
    monkeypatch.setenv(weights.ENV_URL, url)

    with pytest.raises(ValueError, match="no SHA-256 prefix"):
        weights.expected_hash_prefix(url)
    with pytest.raises(WeightsUnavailableError) as info:
        weights.resolve()
    assert "no SHA-256 prefix" in str(info.value)
    assert "original file name" in str(info.value)
    assert sum(server.requests.values()) == 0
    assert _cache_listing() == []


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
    server.routes[f"/{name}"] = data
    monkeypatch.setenv(weights.ENV_URL, server.url(f"/{name}"))

    metric = fid_metric.FrechetInceptionDistance(feature=64)

    cached = weights.cache_dir() / name
    assert cached.read_bytes() == data
    assert _cache_listing() == [name]
    assert server.requests[f"/{name}"] == 1
    expected = torch.load(io.BytesIO(data), weights_only=True)["fc.weight"]  # convolutions are BN-folded
    assert torch.equal(metric._extractor.module.fc.weight, expected)

    server.stop()
    again = fid_metric.FrechetInceptionDistance(feature=64)
    assert server.requests[f"/{name}"] == 1
    assert torch.equal(again._extractor.module.fc.weight, expected)
