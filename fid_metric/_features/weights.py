"""Find and load weights files: one resolver for every file a ``WeightsSpec`` describes.

A ``WeightsSpec`` holds what is known of one file: where it is published, its full SHA-256 and size if known,
and the argument and environment variables that point to it (``INCEPTION`` here,
``fid_metric._features.dinov2.DINOV2``).
``resolve(path, spec)`` takes the first of:

1. ``path``, the caller's argument (``feature_extractor_weights_path=``, ``weights_path=``): a local file;
2. the environment variable ``spec.env_path`` (``FID_METRIC_WEIGHTS``): a local file, for offline clusters;
3. the published file's name in torch hub's checkpoint folder (``torch.hub.get_dir()/checkpoints``), where
   ``torch.hub`` itself keeps downloads; for a file whose hash is not known, a mirror's file name there first;
4. a download from ``spec.env_url`` (``FID_METRIC_WEIGHTS_URL``, a mirror) if set, else from ``spec.url`` if
   the file's hash is known, into that folder (``fid_metric._features.weights_download``: verified, atomic and
   bounded in time).

What is known decides what is checked. A file with a known SHA-256 and size (the Inception file): the cached
file and every download, from ``spec.url`` or from a mirror, whatever hash the mirror's file name claims, must
match them, and a download is saved under the published name. A file without (DINOv2: Meta publishes no
hash): no default download; a mirror's file name must carry a SHA-256 prefix (torch hub's
``<stem>-<hex digits>.<ext>``) that the download must match, and it is saved under that name; cached files are
used as found, like a ``torch.hub.load`` would use them. Files given by path or environment variable are the
user's choice and are not compared with anything. A file is read for its hash once per version
(``sha256_of``, ``fid_metric._features.weights_cache``). Loading uses ``torch.load(weights_only=True)``: no
pickled code runs.
"""

from __future__ import annotations

import http.client
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fid_metric._features.weights_cache import cache_dir, sha256_of
from fid_metric._features.weights_download import (
    download_verified,
    expected_hash_prefix,
    hashed_example,
    url_name,
)

__all__ = [
    "INCEPTION",
    "WeightsSpec",
    "WeightsUnavailableError",
    "cache_dir",
    "expected_hash_prefix",
    "load_state_dict",
    "resolve",
    "sha256_of",
]


@dataclass(frozen=True)
class WeightsSpec:
    """What is known of one weights file, and the names a user points to it with.

    Attributes:
        what: the file in messages, e.g. ``"FID Inception weights"``.
        url: where the official file is published; its file name is the one torch hub caches it as (``name``).
        sha256: the official file's full hex SHA-256, or None where none is published (see the module
            docstring for what each case verifies).
        size: the official file's size in bytes, or None; known with ``sha256``.
        owner: the class whose ``argument`` takes a local file, e.g. ``"FrechetInceptionDistance"``.
        argument: that keyword argument, e.g. ``"feature_extractor_weights_path"``.
        env_path: the environment variable naming a local file.
        env_url: the environment variable naming a mirror's URL.
        cache_name: the file's name in torch hub's checkpoint folder where the URL's does not tell it apart
            (Hugging Face names every open_clip file ``open_clip_model.safetensors``); "" for the URL's.
    """

    what: str
    url: str
    sha256: str | None
    size: int | None
    owner: str
    argument: str
    env_path: str
    env_url: str
    cache_name: str = ""

    @property
    def name(self) -> str:
        """The file's name in the cache: ``cache_name``, else the one in ``url``, e.g.
        ``pt_inception-2015-12-05-6726825d.pth``."""
        return self.cache_name or url_name(self.url)


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


class WeightsUnavailableError(RuntimeError):
    """No weights file could be found or downloaded; the message lists what was tried."""


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
            return download_verified(url, cache_dir() / spec.name, spec.sha256, spec.size)
        return download_verified(url, cache_dir() / url_name(url), expected_hash_prefix(url), size=None)
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
    names = [url_name(mirror)] if mirror and spec.sha256 is None else []
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
        f"a mirror whose file name carries the file's SHA-256 prefix (e.g. {hashed_example(spec.name)})"
        if spec.sha256 is None
        else "a mirror of the same file"
    )
    return (
        f"Could not get the {spec.what}. Tried:\n"
        + "".join(f"  - {line}\n" for line in tried)
        + f"Fetch {published} on a machine with internet access and pass {spec.owner}({spec.argument}='{local}'), "
        f"or set {spec.env_path}={local}, or copy it to {cache_dir() / spec.name}; or set {spec.env_url} to {mirror}."
    )
