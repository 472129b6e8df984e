"""The statistics file formats: our ``.npz`` written and read, and the formats of other tools read.

Read (through :class:`fid_metric._files.npz.NpzArchive`: only the arrays named here are read, each one's header
checked before its data):

* ours (``.npz``, ``format = "fid_metric._files.stats/1"``): ``n``, ``feature_sum``, ``outer_sum``, ``mu``,
  ``sigma``, ``feature_dim``, ``extractor``, ``weights_sha256``, ``compat``, ``fid_metric_version``; with
  groups (``fid-metric stats --groups G``) also ``group_n`` ``(G,)``, ``group_feature_sum`` ``(G, d)`` and
  ``group_outer_sum_triu`` ``(G, d (d + 1) / 2)``, each group's outer-product sum as its upper triangle
  (row by row, diagonal included: the fewest float64 numbers that hold it exactly; 16.8 MB a group at
  d = 2048);
* pytorch-fid ``--save-stats`` and clean-fid reference files: ``mu``, ``sigma``;
* ADM (guided-diffusion evaluator) reference batches: ``mu``, ``sigma`` and the sFID statistics
  ``mu_s``, ``sigma_s`` (their ``arr_0`` of images is never read);
* EDM2's reference ``.pkl`` (``fid_metric._files.edm2_reference``: read without unpickling anything but numpy
  arrays).

:func:`write_stats_file` writes ours atomically (:func:`fid_metric._files.atomic_file.atomic_write`): a reader, a
crash or a concurrent writer never leaves a partial file under the target name. Which definition of FID a file
holds (what it records, or what its format says) is decided by ``FeatureStats.load``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from torch import Tensor

from fid_metric._files.atomic_file import atomic_write
from fid_metric._files.edm2_reference import read_edm2_pickle
from fid_metric._files.npz import ArrayHeader, NpzArchive
from fid_metric._functional.covariance import mean_and_covariance
from fid_metric._functional.distance import check_symmetric
from fid_metric._version import __version__

FORMAT = "fid_metric._files.stats/1"
METADATA_KEYS = ("extractor", "weights_sha256", "compat", "arithmetic")
_SUMS = ("n", "feature_sum", "outer_sum")
_ADM_SFID = ("mu_s", "sigma_s")
_GROUPS = ("group_n", "group_feature_sum", "group_outer_sum_triu")
_KEYS = ("mu", "sigma", *_SUMS, *_ADM_SFID, *METADATA_KEYS, *_GROUPS)  # all that read_stats_file reads
# Files with more features are refused before anything is read: the covariance alone would take 2 GiB, the
# sums' outer product as much again. Inception has 2048, DINOv2 ViT-L 1024, ADM's sFID statistics 2023.
MAX_FEATURE_DIM = 16384
# A jackknife needs a few groups (10 to 20 is usual); 100 groups of 2048-d sums take 3.4 GB once unpacked.
MAX_GROUPS = 100
_MAX_METADATA_CHARS = 1024


class StatsFields(TypedDict):
    """The ``FeatureStats`` fields a statistics file holds (see ``FeatureStats`` for each); "" where unknown."""

    mean: Tensor
    covariance: Tensor
    n: int | None
    feature_sum: Tensor | None
    outer_sum: Tensor | None
    extractor: str
    weights_sha256: str
    compat: str
    arithmetic: str
    extra: dict[str, Tensor]
    groups: tuple[Tensor, Tensor, Tensor] | None


def write_stats_file(
    path: str | os.PathLike,
    mean: Tensor,
    covariance: Tensor,
    metadata: dict[str, str],
    extra: dict[str, Tensor],
    sums: tuple[int, Tensor, Tensor] | None,
    groups: tuple[Tensor, Tensor, Tensor] | None = None,
) -> None:
    """Write our ``.npz`` atomically: the ``(d,)`` mean and ``(d, d)`` covariance, float64 on the CPU, the
    ``METADATA_KEYS`` strings, ``extra`` arrays under their names, if given the sums ``(n, (d,), (d, d))`` and
    the group sums ``((G,), (G, d), (G, d, d))`` (their outer-product sums as upper triangles).

    Raises:
        ValueError: ``path`` cannot be written (:func:`fid_metric._files.atomic_file.check_writable` says why).
    """
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "mu": mean.numpy(),
        "sigma": covariance.numpy(),
        "feature_dim": np.array(mean.shape[0]),
        "fid_metric_version": np.array(__version__),
        **{key: np.array(value) for key, value in metadata.items()},
        **{key: value.numpy() for key, value in extra.items()},
    }
    if sums is not None:
        n, feature_sum, outer_sum = sums
        arrays.update(n=np.array(n), feature_sum=feature_sum.numpy(), outer_sum=outer_sum.numpy())
    if groups is not None:
        counts, group_sums, group_outers = groups
        rows, cols = torch.triu_indices(mean.shape[0], mean.shape[0])
        arrays.update(
            group_n=counts.numpy(),
            group_feature_sum=group_sums.numpy(),
            group_outer_sum_triu=group_outers[:, rows, cols].numpy(),
        )
    atomic_write(path, lambda file: np.savez(file, **arrays))  # type: ignore[arg-type]  # numpy's stub


def read_stats_file(path: Path, key: str | None = None) -> tuple[StatsFields, bool]:
    """The fields a statistics file holds, checked, and whether it is an ADM reference batch.

    Reads only the arrays the module docstring names, each after its header (shape, dtype) was checked
    against the others and against :data:`MAX_FEATURE_DIM`. Tensors are float64 on the CPU: ``mean`` ``(d,)``,
    ``covariance`` ``(d, d)`` (symmetrised), the sums ``(d,)`` and ``(d, d)``, ``extra`` ADM's ``mu_s`` ``(k,)``
    and ``sigma_s`` ``(k, k)``. ``key`` picks the statistics of an EDM2 ``.pkl`` (``"fid"`` or ``"fd_dinov2"``).

    Raises:
        ValueError: naming the file and the field: the file is missing, not an ``.npz``, truncated or
            corrupt; an array is not plain numbers (text, for the metadata), does not fit the others'
            shapes, is too large, or holds NaN or infinite values; or, in our files, ``mu`` is not
            ``feature_sum / n``, ``sigma`` is not the covariance from the sums, or ``n`` is not an integer >= 2.
    """
    if path.suffix.lower() == ".pkl":
        arrays, n, recorded = read_edm2_pickle(path, key)
        _check_mean_and_covariance(path, {k: v.shape for k, v in arrays.items()}, "mu", "sigma", "d")
        fields = _fields_of(path, arrays)
        fields["n"], fields["compat"], fields["extractor"] = n, recorded["compat"], recorded["extractor"]
        return fields, False
    with NpzArchive(path) as archive:
        headers = {key: archive.header(key) for key in _KEYS if key in archive.keys}
        _check_headers(path, headers, archive.keys)
        arrays = {key: archive.read(key, header) for key, header in headers.items()}
        adm = "arr_0" in archive.keys or "mu_s" in headers  # ADM's reference batches: images and statistics
    return _fields_of(path, arrays), adm


def _check_headers(path: Path, headers: dict[str, ArrayHeader], keys: frozenset[str]) -> None:
    """Raise ``ValueError`` unless the headers describe statistics this module reads, within its limits."""
    if "mu" not in headers or "sigma" not in headers:
        raise ValueError(
            f"{path} holds {sorted(keys)}; a statistics file needs at least 'mu' and 'sigma' "
            "(pytorch-fid, clean-fid, ADM) or is written by fid_metric."
        )
    for key, header in headers.items():
        if key in METADATA_KEYS:
            if header.dtype.kind != "U" or header.shape != () or not 0 < header.nbytes <= 4 * _MAX_METADATA_CHARS:
                raise ValueError(
                    f"{path}: '{key}' must be a string of at most {_MAX_METADATA_CHARS} characters, got "
                    f"{header.dtype} of shape {header.shape}."
                )
        elif header.dtype.kind not in "fiu":
            raise ValueError(
                f"{path} is not a readable statistics file: '{key}' has dtype {header.dtype}; expected plain "
                "numbers, float or int (pickled objects are never loaded)."
            )
    shapes = {key: header.shape for key, header in headers.items()}
    d = _check_mean_and_covariance(path, shapes, "mu", "sigma", "d")
    if any(key in headers for key in _ADM_SFID):
        _check_mean_and_covariance(path, shapes, *_ADM_SFID, "k")
    present = [key for key in _SUMS if key in headers]
    missing = [key for key in _SUMS if key not in headers]
    if present and (missing or headers["n"].shape != ()):
        raise ValueError(
            f"{path} holds {' and '.join(repr(key) for key in present)} but not a scalar n with 'feature_sum' and "
            f"'outer_sum' (missing: {missing}); fid_metric statistics files store the three together."
        )
    if present and (headers["feature_sum"].shape != (d,) or headers["outer_sum"].shape != (d, d)):
        raise ValueError(
            f"{path}: sums of shapes {headers['feature_sum'].shape}, {headers['outer_sum'].shape} do not match d={d}."
        )
    _check_group_headers(path, headers, d, bool(present))


def _check_group_headers(path: Path, headers: dict[str, ArrayHeader], d: int, has_sums: bool) -> None:
    """Raise ``ValueError`` unless the group arrays are all absent, or all present beside the sums with the shapes
    ``(G,)`` (integers), ``(G, d)`` and ``(G, d (d + 1) / 2)``, 2 <= G <= :data:`MAX_GROUPS`."""
    present = [key for key in _GROUPS if key in headers]
    if not present:
        return
    g = headers["group_n"].shape[0] if "group_n" in headers and len(headers["group_n"].shape) == 1 else 0
    expected = {"group_n": (g,), "group_feature_sum": (g, d), "group_outer_sum_triu": (g, d * (d + 1) // 2)}
    shapes = {key: headers[key].shape if key in headers else None for key in _GROUPS}
    if not has_sums or shapes != expected or not 2 <= g <= MAX_GROUPS or headers["group_n"].dtype.kind not in "iu":
        raise ValueError(
            f"{path}: group sums must come with the sums, as integer group_n (G,), group_feature_sum (G, {d}) and "
            f"group_outer_sum_triu (G, {d * (d + 1) // 2}) with 2 <= G <= {MAX_GROUPS}; got {shapes}"
            f"{'' if has_sums else ' without n, feature_sum and outer_sum'}."
        )


def _check_mean_and_covariance(path: Path, shapes: dict[str, tuple[int, ...]], mean: str, cov: str, d: str) -> int:
    """The dimension of a ``(d,)`` mean and ``(d, d)`` covariance pair (``shapes`` of the arrays present), or
    ``ValueError`` naming both."""
    mean_shape = shapes.get(mean)
    size = mean_shape[0] if mean_shape is not None and len(mean_shape) == 1 else 0
    if size > MAX_FEATURE_DIM:
        raise ValueError(
            f"{path}: '{mean}' has {size} features; statistics of at most {MAX_FEATURE_DIM} are read (a {size} x "
            f"{size} float64 covariance would take {size * size * 8 / 2**30:.0f} GiB)."
        )
    if size < 1 or shapes.get(cov) != (size, size):
        raise ValueError(
            f"{path}: '{mean}' must be ({d},) and '{cov}' ({d}, {d}), got {mean_shape} and {shapes.get(cov)}."
        )
    return size


def _fields_of(path: Path, arrays: dict[str, np.ndarray]) -> StatsFields:
    """The fields of the arrays ``_check_headers`` passed, after checking their values."""
    tensors = {}
    for key, array in arrays.items():
        if key in METADATA_KEYS or key == "n":
            continue
        tensors[key] = torch.from_numpy(np.asarray(array, dtype=np.float64))
        if not torch.isfinite(tensors[key]).all():
            raise ValueError(f"{path}: '{key}' holds NaN or infinite values.")
    # Symmetric beyond round-off, or refused: a file holding one triangle is not a covariance. Then symmetrised
    # once, here: the distance reads one triangle of one covariance and all of the other, so another tool's
    # round-off asymmetry would otherwise make FID(a, b) differ from FID(b, a).
    for key in ("sigma", "outer_sum", "sigma_s"):
        if key in tensors:
            try:
                check_symmetric(tensors[key], f"'{key}'")
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
    mean, covariance = tensors["mu"], (tensors["sigma"] + tensors["sigma"].T) / 2
    n = feature_sum = outer_sum = None
    if "n" in arrays:
        n = _count(path, arrays["n"])
        feature_sum, outer_sum = tensors["feature_sum"], (tensors["outer_sum"] + tensors["outer_sum"].T) / 2
        _check_sums(path, n, feature_sum, outer_sum, mean, covariance)
    extra = {key: tensors[key] for key in _ADM_SFID if key in tensors}
    groups = None
    if "group_n" in arrays:
        # checked to add up to the sums by FeatureStats, as every FeatureStats' groups are
        groups = _unpacked_groups(arrays["group_n"], tensors["group_feature_sum"], tensors["group_outer_sum_triu"])

    def metadata(key: str) -> str:
        return str(arrays[key][()]) if key in arrays else ""

    return StatsFields(
        mean=mean,
        covariance=covariance,
        n=n,
        feature_sum=feature_sum,
        outer_sum=outer_sum,
        extractor=metadata("extractor"),
        weights_sha256=metadata("weights_sha256"),
        compat=metadata("compat"),
        arithmetic=metadata("arithmetic"),
        extra=extra,
        groups=groups,
    )


def _unpacked_groups(counts: np.ndarray, sums: Tensor, triangles: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(counts (G,) int64, sums (G, d), outer sums (G, d, d))`` from the file's arrays (upper triangles)."""
    g, d = sums.shape
    rows, cols = torch.triu_indices(d, d)
    outers = torch.empty(g, d, d, dtype=torch.float64)
    outers[:, rows, cols] = triangles
    outers[:, cols, rows] = triangles
    return torch.from_numpy(np.asarray(counts, dtype=np.int64)), sums, outers


def _count(path: Path, array: np.ndarray) -> int:
    value = array.item()
    if not (float(value).is_integer() and value >= 2):
        raise ValueError(f"{path}: 'n' must be an integer >= 2, got {value}.")
    return int(value)


def _check_sums(path: Path, n: int, feature_sum: Tensor, outer_sum: Tensor, mean: Tensor, covariance: Tensor) -> None:
    """Raise ``ValueError`` unless ``mu`` and ``sigma`` are what ``mean_and_covariance`` makes of the sums."""
    try:
        expected_mean, expected_covariance = mean_and_covariance(n, feature_sum, outer_sum)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if (mean - expected_mean).abs().max() > 1e-9 * expected_mean.abs().max():
        raise ValueError(f"{path}: 'mu' is not 'feature_sum' / 'n'; the file is inconsistent.")
    # Relative to the mean squares, the scale of the sums' own round-off: where cancellation lost digits, the
    # covariance recomputed after symmetrising outer_sum differs from the saved one by that much.
    difference = (covariance - expected_covariance).abs()
    scale = outer_sum.diagonal().max() / (n - 1)
    if difference.max() > 1e-9 * scale:
        i, j = divmod(int(difference.argmax()), len(mean))
        raise ValueError(
            f"{path}: 'sigma' is not the covariance of 'outer_sum', 'feature_sum' and 'n': it differs by "
            f"{difference[i, j].item():.3g} at [{i}, {j}] (mean squares up to {scale.item():.3g}); the file is "
            "inconsistent."
        )
