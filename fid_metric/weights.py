"""Find, download, verify and load the FID Inception weights.

Where the weights come from, first match wins:

1. the ``feature_extractor_weights_path=`` argument (a local file);
2. the environment variable ``FID_METRIC_WEIGHTS`` (a local file, for offline clusters);
3. the cached download in torch hub's checkpoint folder (``torch.hub.get_dir()/checkpoints``);
4. a download from ``FID_METRIC_WEIGHTS_URL`` if set (a mirror), else pytorch-fid's release file.

A download is verified before it is kept: as with ``torch.hub``, the file name carries the first hex digits
of the file's SHA-256 (``pt_inception-2015-12-05-6726825d.pth``) and the bytes must hash to them. It is
written to a temporary file beside the target and renamed into place only once verified, so a failed,
interrupted or corrupt download leaves nothing behind. Loading uses ``torch.load(weights_only=True)``:
no pickled code runs.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import torch
from torch import Tensor

DEFAULT_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
ENV_WEIGHTS = "FID_METRIC_WEIGHTS"
ENV_URL = "FID_METRIC_WEIGHTS_URL"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,64})\.")
_DOWNLOAD_TIMEOUT_S = 60


class WeightsUnavailableError(RuntimeError):
    """No weights file could be found or downloaded; the message lists what was tried."""


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """torch hub's checkpoint folder, where ``torch.hub.load_state_dict_from_url`` keeps downloads too."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def expected_hash_prefix(url: str) -> str:
    """The SHA-256 prefix in the URL's file name, e.g. ``6726825d``; ValueError if the name has none."""
    name = Path(urllib.parse.urlparse(url).path).name
    match = _HASH_IN_NAME.search(name)
    if match is None:
        raise ValueError(
            f"The weights URL {url!r} has no SHA-256 prefix in its file name (expected e.g. "
            "'pt_inception-2015-12-05-6726825d.pth'), so the download could not be verified. A mirror must keep "
            "the original file name."
        )
    return match.group(1)


def download(url: str, directory: str | os.PathLike) -> Path:
    """Download ``url`` into ``directory`` under its own file name, verified and atomic; return the path.

    Raises ``RuntimeError`` if the bytes do not hash to the prefix in the file name (nothing is kept),
    ``OSError``/``urllib.error.URLError`` if the server cannot be reached, and ``http.client.HTTPException``
    (e.g. ``IncompleteRead``) if the response breaks off or is malformed.
    """
    prefix = expected_hash_prefix(url)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / Path(urllib.parse.urlparse(url).path).name
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as tmp, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            shutil.copyfileobj(response, tmp, 1 << 20)
        actual = sha256_of(tmp_name)
        if not actual.startswith(prefix):
            raise RuntimeError(
                f"Downloaded weights from {url} are corrupt or not the expected file: SHA-256 {actual[:16]}... "
                f"does not start with {prefix}. Nothing was saved."
            )
        os.chmod(tmp_name, 0o644)  # mkstemp makes it owner-only; a shared cache must be readable
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def resolve(path: str | os.PathLike | None = None) -> Path:
    """Return a local weights file, downloading it if needed (see the module docstring for the order)."""
    if path is not None:
        return _existing(Path(path), "feature_extractor_weights_path")
    if os.environ.get(ENV_WEIGHTS):
        return _existing(Path(os.environ[ENV_WEIGHTS]), f"${ENV_WEIGHTS}")
    url = os.environ.get(ENV_URL) or DEFAULT_URL
    cached = cache_dir() / Path(urllib.parse.urlparse(url).path).name
    if cached.is_file():
        return cached
    try:
        return download(url, cache_dir())
    except (OSError, urllib.error.URLError, http.client.HTTPException, RuntimeError, ValueError) as err:
        raise WeightsUnavailableError(
            "Could not get the FID Inception weights. Tried:\n"
            f"  - feature_extractor_weights_path: not given\n"
            f"  - ${ENV_WEIGHTS}: not set\n"
            f"  - the cache: {cached} does not exist\n"
            f"  - downloading {url}{' (from $' + ENV_URL + ')' if os.environ.get(ENV_URL) else ''}: {err}\n"
            f"Fetch {DEFAULT_URL} on a machine with internet access, copy it here, and pass "
            f"FrechetInceptionDistance(feature_extractor_weights_path='/path/to/{Path(DEFAULT_URL).name}') or set "
            f"{ENV_WEIGHTS}=/path/to/{Path(DEFAULT_URL).name}; or set {ENV_URL} to a mirror of the same file."
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
