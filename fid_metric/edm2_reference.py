"""EDM2's reference statistics (``.pkl``), read without unpickling anything but numpy arrays.

NVlabs/edm2 ``calculate_metrics.py`` saves ``pickle.dump({"num_images": N, "fid": {"mu", "sigma"},
"fd_dinov2": {"mu", "sigma"}})`` (its ``dataset-refs/img512.pkl`` and the like). A pickle can name any callable
and call it while loading, so ``read_edm2_pickle`` unpickles with a ``find_class`` that admits only what numpy
arrays are rebuilt from (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype`` and numpy
scalars); any other global stops the load before it is called. The arrays must then be plain numbers.

Each entry is one definition: ``"fid"`` is EDM2's ``InceptionV3Detector`` (NVIDIA's TorchScript port of the
TensorFlow graph, TensorFlow's FID: ``compat="tensorflow"``, 2048-d), ``"fd_dinov2"`` its ``DINOv2Detector``
with its default ``resize_mode="torch"`` (``DINOv2Features(resize="edm2")``).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

# EDM2's entries: the definition each one holds, as FeatureStats fields
EDM2_DEFINITIONS = {
    "fid": {"compat": "tensorflow", "extractor": "inception-2015-12-05"},
    "fd_dinov2": {"compat": "", "extractor": "dinov2-vitl14-edm2"},
}
# (module, name) of the globals a pickle of numpy arrays refers to, in numpy 1 and numpy 2
_NUMPY_ARRAY_GLOBALS = frozenset(
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
) | {("numpy", "ndarray"), ("numpy", "dtype")}
_MAX_BYTES = 4 << 30  # two 16,384-d float64 covariances (MAX_FEATURE_DIM) are 4 GiB


class _NumpyArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_ARRAY_GLOBALS:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}, which is not how numpy arrays are stored; a pickle can run code "
                "while loading, so only numpy arrays are admitted"
            )
        return super().find_class(module, name)


def read_edm2_pickle(path: Path, key: str | None) -> tuple[dict[str, np.ndarray], int | None, dict[str, str]]:
    """The ``mu`` and ``sigma`` of entry ``key`` of an EDM2 reference ``.pkl``, its ``num_images`` and the
    definition the entry holds (``EDM2_DEFINITIONS``; the extractor with its dimension, e.g.
    ``"inception-2015-12-05/2048"``).

    Raises:
        ValueError: naming the file: it cannot be read, refers to anything but numpy arrays (nothing it names
            is called), is not EDM2's layout, or ``key`` is missing or not given where the file holds several.
    """
    try:
        size = path.stat().st_size
        if size > _MAX_BYTES:
            raise ValueError(f"{size} bytes, more than statistics of at most 16,384 features take")
        with path.open("rb") as file:
            content = _NumpyArraysOnly(io.BytesIO(file.read())).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} is not a readable EDM2 statistics pickle: {err}") from None
    entries = {name: content[name] for name in EDM2_DEFINITIONS if isinstance(content, dict) and name in content}
    if not entries:
        keys = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"{path} holds {keys}, not EDM2's statistics ({', '.join(EDM2_DEFINITIONS)}).")
    if key is None and len(entries) > 1:
        raise ValueError(
            f"{path} holds the statistics of {', '.join(map(repr, entries))}: say which with key= ('fid' for "
            "FID, 'fd_dinov2' for FD_DINOv2)."
        )
    key = key or next(iter(entries))
    if key not in entries:
        raise ValueError(f"{path} has no {key!r} statistics; it holds {', '.join(map(repr, entries))}.")
    entry = entries[key]
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: {key!r} is a {type(entry).__name__}, not EDM2's dict of 'mu' and 'sigma'.")
    arrays: dict[str, np.ndarray] = {}
    for name in ("mu", "sigma"):
        array = entry.get(name)
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
            raise ValueError(f"{path}: {key}'s {name!r} is not an array of numbers.")
        arrays[name] = array
    count = content.get("num_images")
    n = int(count) if isinstance(count, (int, np.integer)) and int(count) >= 2 else None
    definition = EDM2_DEFINITIONS[key]
    return arrays, n, {**definition, "extractor": f"{definition['extractor']}/{len(arrays['mu'])}"}
