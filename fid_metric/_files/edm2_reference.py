"""EDM2's reference statistics (``.pkl``), read without unpickling anything but numpy arrays.

NVlabs/edm2 ``calculate_metrics.py`` saves ``pickle.dump({"num_images": N, "fid": {"mu", "sigma"},
"fd_dinov2": {"mu", "sigma"}})`` (its ``dataset-refs/img512.pkl`` and the like). A pickle can name any callable
and call it while loading, so ``read_edm2_pickle`` unpickles with a ``find_class`` that admits only the globals
numpy's pickles of arrays name (protocols 0 to 5), each replaced by a stand-in that does only what numpy's own
pickles ask of it:
an empty array filled from the bytes the file holds, a dtype of numbers, latin-1 bytes. Any other global, or
another use of these, stops the load before anything is called or allocated beyond the file's own bytes.

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
_MAX_BYTES = 4 << 30  # two 16,384-d float64 covariances (MAX_FEATURE_DIM) are 4 GiB
_NUMBER_KINDS = "fiub"  # floating, signed and unsigned integers, booleans


def _reconstruct(subtype: object, shape: object, dtype: object) -> np.ndarray:
    """Stand-in for ``numpy.core.multiarray._reconstruct``: the empty ``(0,)`` array numpy's pickles start from
    (``ndarray.__reduce__``), which the pickle's next step fills from the bytes it holds; any other request
    (another class, a shape to allocate) is refused."""
    if subtype is not np.ndarray or shape != (0,):
        raise pickle.UnpicklingError("it asks numpy's _reconstruct for something numpy's own pickles never do")
    return np.ndarray((0,), dtype=np.uint8)


def _frombuffer(buffer: object, dtype: object, shape: object, order: object) -> np.ndarray:
    """Stand-in for ``numpy._core.numeric._frombuffer`` (pickle protocol 5): a copy of the in-band bytes as an
    array of numbers."""
    if not isinstance(buffer, (bytes, bytearray)) or not isinstance(dtype, np.dtype) or dtype.kind not in _NUMBER_KINDS:
        raise pickle.UnpicklingError("its protocol-5 array is not plain numbers held in the file")
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape, order=order).copy()  # type: ignore[call-overload]


def _encode(text: object, encoding: object) -> bytes:
    """Stand-in for ``_codecs.encode``, which pickle protocols 0-2 use for the bytes of an array."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("it asks _codecs.encode for something else than latin-1 bytes")
    return text.encode("latin1")


def _dtype(spec: object, align: object = False, copy: object = True) -> np.dtype:
    dtype = np.dtype(spec)  # type: ignore[call-overload]
    if dtype.kind not in _NUMBER_KINDS:
        raise pickle.UnpicklingError(f"it holds an array of {dtype}, not of numbers")
    return dtype


# (module, name) of the globals numpy's pickles of arrays refer to (numpy 1 and 2, protocols 0-5): what is admitted
_ADMITTED: dict[tuple[str, str], Any] = {
    **{(module, "_reconstruct"): _reconstruct for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_frombuffer"): _frombuffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
}


class _NumpyArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ADMITTED:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}, which is not how numpy arrays are stored; a pickle can run code "
                "while loading, so only numpy arrays are admitted"
            )
        return _ADMITTED[(module, name)]


def read_edm2_pickle(path: Path, key: str | None) -> tuple[dict[str, np.ndarray], int | None, dict[str, str]]:
    """The ``mu`` and ``sigma`` of entry ``key`` of an EDM2 reference ``.pkl``, its ``num_images`` and the
    definition the entry holds (``EDM2_DEFINITIONS``; the extractor with its dimension, e.g.
    ``"inception-2015-12-05/2048"``).

    ``mu`` and ``sigma`` are non-empty numpy arrays of numbers, as stored (the caller checks that they are
    ``(d,)`` and ``(d, d)``); ``num_images`` is None unless it is an int >= 2.

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
    except Exception as err:  # whatever a damaged or crafted file makes the unpickler raise, MemoryError included
        raise ValueError(f"{path} is not a readable EDM2 statistics pickle: {err}") from None
    entries = {name: content[name] for name in EDM2_DEFINITIONS if isinstance(content, dict) and name in content}
    if not entries:
        keys = sorted(map(str, content)) if isinstance(content, dict) else type(content).__name__
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
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu" or array.size == 0:
            raise ValueError(f"{path}: {key}'s {name!r} is not an array of numbers.")
        arrays[name] = array
    count = content.get("num_images")
    n = int(count) if isinstance(count, (int, np.integer)) and int(count) >= 2 else None
    definition = EDM2_DEFINITIONS[key]
    return arrays, n, {**definition, "extractor": f"{definition['extractor']}/{len(arrays['mu'])}"}
