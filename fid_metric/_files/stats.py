"""Feature statistics: count n, float64 feature sum, float64 outer-product sum; merge; definition; files.

Sums add exactly across batches, processes and jobs, so they are what the metric keeps, what DDP
all-reduces and what our statistics files store; the mean and covariance follow from them
(``fid_metric._functional.covariance``) only when a distance is computed. Files written by other tools hold
only the mean and covariance: they serve as a fixed reference but cannot be merged. The file formats are
``fid_metric._files.stats_formats``.

Every ``FeatureStats`` says which definition of FID made it (``compat``, ``extractor``, ``weights_sha256``),
where that can be known. Our files record it. Of the others, the format says it for two: an ADM reference
batch is TensorFlow's FID (``compat="tensorflow"``, the 2048-d Inception pool), and a clean-fid statistics
file named as clean-fid names them (``<name>_<mode>_<split>_<res>.npz``) says its mode: ``clean`` is
``"clean-fid"``, ``legacy_tensorflow`` ``"tensorflow"``, ``legacy_pytorch`` ``"pytorch-fid"``. A pytorch-fid
file, or any bare ``mu``/``sigma``, does not: the caller says what it holds (``load(path, compat=...)``), and
a metric refuses statistics of an unknown definition.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from fid_metric._checks import checked_choice
from fid_metric._features.inception import INCEPTION_ID, POOL_FEATURES
from fid_metric._features.preprocess import COMPAT_MODES
from fid_metric._files.stats_formats import METADATA_KEYS, read_stats_file, write_stats_file
from fid_metric._functional.covariance import mean_and_covariance


def identity_differences(mine: Mapping[str, object], theirs: Mapping[str, object]) -> list[tuple[str, object, object]]:
    """``(field, mine, theirs)`` for each field of two identities (feature dimension, extractor, weights SHA-256,
    compat, arithmetic) that both know (neither missing nor empty) and that differs: the one comparison behind
    statistics files, checkpoints and merges."""
    unknown = ("", None)
    return [
        (key, value, theirs[key])
        for key, value in mine.items()
        if key in theirs and value not in unknown and theirs[key] not in unknown and value != theirs[key]
    ]


class StatsMismatchError(ValueError):
    """Two statistics (or statistics and a metric) were made by different extractors or pipelines."""


@dataclass(frozen=True)
class FeatureStats:
    """Statistics of ``n`` feature vectors of dimension d.

    Attributes:
        mean: ``(d,)`` float64.
        covariance: ``(d, d)`` float64, unbiased.
        n: number of samples, or None when a file held only the mean and covariance.
        feature_sum, outer_sum: ``(d,)`` and ``(d, d)`` float64 sums, or None (then not mergeable).
        extractor: e.g. ``"inception-2015-12-05/2048"``, or "" if unknown.
        weights_sha256: hex SHA-256 of the network weights file, or "" if unknown.
        compat: the preprocessing pipeline (``"tensorflow"``, ...), or "" if unknown.
        arithmetic: the network's arithmetic (``"exact"``, or a fast mode, which is not the definition), or "".
        extra: ADM's sFID statistics ``mu_s`` ``(k,)`` and ``sigma_s`` ``(k, k)``, float64, when a file held them.
        groups: the same samples' sums in G groups, for the jackknife (``fid_metric.compare`` and the standard
            error of FID): ``(counts (G,) int64, feature sums (G, d) float64, outer-product sums (G, d, d)
            float64)``, sample j of the sampler's order in group ``j % G``; or None. They add up to the sums.
    """

    mean: Tensor
    covariance: Tensor
    n: int | None = None
    feature_sum: Tensor | None = None
    outer_sum: Tensor | None = None
    extractor: str = ""
    weights_sha256: str = ""
    compat: str = ""
    arithmetic: str = ""
    extra: dict[str, Tensor] = field(default_factory=dict)
    groups: tuple[Tensor, Tensor, Tensor] | None = None

    def __post_init__(self) -> None:
        checked_choice("compat", self.compat, ("", *COMPAT_MODES), what=f"one of {COMPAT_MODES} (or '' if unknown)")
        if self.groups is not None:
            _check_group_sums(self.groups, self.n, self.feature_sum, self.outer_sum)

    @classmethod
    def from_sums(
        cls,
        n: int,
        feature_sum: Tensor,
        outer_sum: Tensor,
        *,
        extractor: str = "",
        weights_sha256: str = "",
        compat: str = "",
        arithmetic: str = "",
        groups: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> FeatureStats:
        """From the sums of ``n >= 2`` samples (the metric's states), with what made their features.

        ``feature_sum`` ``(d,)`` and ``outer_sum`` ``(d, d)``, of any float dtype and device, are kept as float64
        on the CPU; so are ``groups``, the same samples' sums in G groups (see the class), checked to add up
        to them.
        """
        if n < 2:
            raise ValueError(f"Statistics need at least 2 samples to estimate a covariance, got {n}.")
        feature_sum = feature_sum.detach().to("cpu", torch.float64)
        outer_sum = outer_sum.detach().to("cpu", torch.float64)
        mean, covariance = mean_and_covariance(n, feature_sum, outer_sum)
        if groups is not None:
            counts, sums, outers = (t.detach().cpu() for t in groups)
            groups = counts.to(torch.int64), sums.to(torch.float64), outers.to(torch.float64)
        metadata = (extractor, weights_sha256, compat, arithmetic)
        return cls(mean, covariance, int(n), feature_sum, outer_sum, *metadata, groups=groups)

    @classmethod
    def from_features(
        cls,
        features: Tensor,
        *,
        extractor: str = "",
        weights_sha256: str = "",
        compat: str = "",
        arithmetic: str = "",
    ) -> FeatureStats:
        """From ``(n, d)`` features of any float dtype and device (summed in float64 on the CPU), n >= 2."""
        f = features.detach().to("cpu", torch.float64)
        return cls.from_sums(
            f.shape[0],
            f.sum(0),
            f.T @ f,
            extractor=extractor,
            weights_sha256=weights_sha256,
            compat=compat,
            arithmetic=arithmetic,
        )

    @property
    def feature_dim(self) -> int:
        """d, the number of features."""
        return self.mean.shape[0]

    def sums(self) -> tuple[int, Tensor, Tensor]:
        """``(n, feature sum (d,), outer-product sum (d, d))``.

        Raises:
            ValueError: these statistics hold only a mean and covariance.
        """
        if self.n is None or self.feature_sum is None or self.outer_sum is None:
            raise ValueError(
                "These statistics hold only a mean and covariance (e.g. a pytorch-fid, clean-fid or ADM "
                "file), so they cannot be merged; they can still serve as a fixed reference."
            )
        return self.n, self.feature_sum, self.outer_sum

    @property
    def mergeable(self) -> bool:
        """True when the sums are known, so other statistics can be added to these exactly."""
        return self.n is not None and self.feature_sum is not None and self.outer_sum is not None

    def check_compatible(
        self, other: FeatureStats | dict[str, object], name: str = "these statistics", other_name: str = "the others"
    ) -> None:
        """Raise ``StatsMismatchError`` if feature dimension, extractor, weights or compat mode differ.

        Fields that one side does not know (empty strings, e.g. from a pytorch-fid file) are not compared.
        """
        theirs = other if isinstance(other, dict) else {"feature_dim": other.feature_dim, **_metadata_of(other)}
        differences = identity_differences({"feature_dim": self.feature_dim, **_metadata_of(self)}, theirs)
        if differences:
            key, value, other_value = differences[0]
            raise StatsMismatchError(
                f"Cannot combine {name} with {other_name}: {key} is {value!r} in {name} but {other_value!r} "
                f"in {other_name}."
            )

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Statistics of the union of both sample sets (exact: the sums add); also ``a + b``. Groups add group
        by group where both hold as many; otherwise the union has none.

        Example:
            >>> import torch
            >>> from fid_metric import FeatureStats
            >>> a = FeatureStats.from_features(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
            >>> b = FeatureStats.from_features(torch.tensor([[4.0, 5.0], [6.0, 7.0]]))
            >>> (a + b).n, (a + b).mean
            (4, tensor([3., 4.], dtype=torch.float64))
            >>> torch.equal((a + b).covariance, FeatureStats.from_features(torch.arange(8.0).view(4, 2)).covariance)
            True
        """
        (n1, sum1, outer1), (n2, sum2, outer2) = self.sums(), other.sums()
        self.check_compatible(other)
        return FeatureStats.from_sums(
            n1 + n2,
            sum1 + sum2,
            outer1 + outer2,
            # known for the union only where both say it (an unknown field is not the other's)
            extractor=self.extractor if self.extractor == other.extractor else "",
            weights_sha256=self.weights_sha256 if self.weights_sha256 == other.weights_sha256 else "",
            compat=self.compat if self.compat == other.compat else "",
            arithmetic=self.arithmetic if self.arithmetic == other.arithmetic else "",
            groups=_merged_groups(self.groups, other.groups),
        )

    __add__ = merge

    def save(self, path: str | os.PathLike) -> None:
        """Write a self-describing ``.npz`` atomically: the sums, mean, covariance and what made them (mean and
        covariance alone for statistics without sums); a crash or a concurrent writer never leaves a partial
        file under ``path``.

        Raises:
            ValueError: ``path`` cannot be written (:func:`fid_metric._files.atomic_file.check_writable` says why).
        """
        sums = self.sums() if self.mergeable else None
        write_stats_file(path, self.mean, self.covariance, _metadata_of(self), self.extra, sums, self.groups)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        compat: str | None = None,
        key: str | None = None,
        extractor: str | None = None,
    ) -> FeatureStats:
        """Read our ``.npz``, a pytorch-fid / clean-fid ``.npz``, an ADM reference batch or an EDM2 ``.pkl``.

        Reads only the statistics (ours: ``n``, ``feature_sum``, ``outer_sum``, ``mu``, ``sigma`` and what made
        them; the others: ``mu``, ``sigma`` and ADM's ``mu_s``, ``sigma_s``; never an ADM batch's images), each
        array after its header (shape, dtype) was checked against the others and against 16384 features.

        Args:
            path: the file.
            compat: which definition of FID the file holds, for a file that does not record it (a pytorch-fid
                ``--save-stats`` file: ``"pytorch-fid"``); for one that does, or whose format says it, it must
                agree. Statistics of a compat mode are of the FID Inception network's pool features.
            key: which statistics of an EDM2 ``.pkl`` (``"fid"`` or ``"fd_dinov2"``), which holds both
                (``fid_metric._files.edm2_reference``: read without unpickling anything but numpy arrays).
            extractor: the feature network, for a file of another network's features that does not record it
                (e.g. ``DINOv2Features(resize="edm2").extractor_id``); it must agree likewise.

        Raises:
            StatsMismatchError: ``compat`` contradicts what the file records or its format says.
            ValueError: naming the file and the field: the file is missing, not an ``.npz``, truncated or
                corrupt; an array is not plain numbers (text, for the metadata), does not fit the others'
                shapes, is too large, or holds NaN or infinite values; or, in our files, ``mu`` is not
                ``feature_sum / n``, ``sigma`` is not the covariance from the sums, or ``n`` is not an integer
                >= 2.
        """
        path = Path(path)
        fields, adm = read_stats_file(path, key)
        try:
            stats = cls(**fields)
        except ValueError as err:  # e.g. groups that do not add up to the sums
            raise ValueError(f"{path}: {err}") from None
        return _with_definition(path, stats, compat, adm, extractor)


# clean-fid's get_reference_statistics names its files f"{name}_{mode}{model_modifier}_{split}_{res}.npz", lower case
_CLEAN_FID_NAME = re.compile(
    r"_(clean|legacy_tensorflow|legacy_pytorch)(_clip_vit_b_32)?_(train[a-z0-9]*|test|custom)_([0-9]+|na)\.npz$"
)
_CLEAN_FID_MODES = {"clean": "clean-fid", "legacy_tensorflow": "tensorflow", "legacy_pytorch": "pytorch-fid"}


def _with_definition(
    path: Path, stats: FeatureStats, stated: str | None, adm: bool, stated_extractor: str | None = None
) -> FeatureStats:
    """``stats`` with the definition the file records, its format says, or the caller states; all must agree."""
    if stated is not None:
        checked_choice("compat", stated, COMPAT_MODES)
    if stated_extractor is not None:
        if stats.extractor and stats.extractor != stated_extractor:
            raise StatsMismatchError(
                f"{path} holds statistics of extractor={stats.extractor!r}, not the {stated_extractor!r} the caller "
                "states."
            )
        stats = dataclasses.replace(stats, extractor=stated_extractor)
    known, source = stats.compat, "records"
    match = _CLEAN_FID_NAME.search(path.name.lower())
    other_network = (stats.extractor and not stats.extractor.startswith(INCEPTION_ID)) or (match and match.group(2))
    if other_network:  # compat modes are pipelines into the Inception network: none applies to these features
        if stated is not None:
            network = stats.extractor or "CLIP ViT-B/32 (by its clean-fid name)"
            raise StatsMismatchError(
                f"{path} holds features of {network}, to which no compat mode applies (they are pipelines into the "
                f"FID Inception network), not compat={stated!r} statistics."
            )
        return stats
    if not known and adm:
        known, source = "tensorflow", "is an ADM reference batch, which holds"
    if not known and match:
        known = _CLEAN_FID_MODES[match.group(1)]
        source = f"is named as clean-fid's mode={match.group(1)!r} files, which hold"
    if known and stated is not None and stated != known:
        raise StatsMismatchError(
            f"{path} {source} compat={known!r} statistics, not the compat={stated!r} the caller states."
        )
    compat = known or stated or ""
    if not compat or stats.compat:
        return stats
    # a compat mode is a pipeline into the FID Inception network, so the features are one of its pool layers
    extractor = stats.extractor or (f"{INCEPTION_ID}/{stats.feature_dim}" if stats.feature_dim in POOL_FEATURES else "")
    return dataclasses.replace(stats, compat=compat, extractor=extractor)


def _check_group_sums(
    groups: tuple[Tensor, Tensor, Tensor], n: int | None, feature_sum: Tensor | None, outer_sum: Tensor | None
) -> None:
    """Raise ``ValueError`` unless ``groups`` (counts ``(G,)``, sums ``(G, d)``, outer sums ``(G, d, d)``) are
    G >= 2 groups of the samples that ``n``, ``feature_sum`` and ``outer_sum`` sum: counts >= 0 adding up to n,
    sums adding up to the sums within round-off (1e-9 of ``sqrt(n max_j outer_jj)``, which bounds the sum of
    any feature's magnitudes, and of ``max_j outer_jj``)."""
    if n is None or feature_sum is None or outer_sum is None:
        raise ValueError("group sums need the sums of all samples beside them (n, feature_sum, outer_sum).")
    counts, sums, outers = groups
    d = feature_sum.shape[0]
    g = counts.shape[0] if counts.ndim == 1 else 0
    if g < 2 or sums.shape != (g, d) or outers.shape != (g, d, d) or counts.is_floating_point():
        raise ValueError(
            f"group sums must be integer counts (G,), sums (G, {d}) and outer sums (G, {d}, {d}) with G >= 2, got "
            f"{counts.dtype} {tuple(counts.shape)}, {tuple(sums.shape)} and {tuple(outers.shape)}."
        )
    if bool((counts < 0).any()) or int(counts.sum()) != n:
        raise ValueError(f"group counts {counts.tolist()} must be >= 0 and add up to n = {n}.")
    scale = float(outer_sum.diagonal().max())
    if float((sums.sum(0) - feature_sum).abs().max()) > 1e-9 * (n * scale) ** 0.5:
        raise ValueError("the group feature sums do not add up to feature_sum; the statistics are inconsistent.")
    if float((outers.sum(0) - outer_sum).abs().max()) > 1e-9 * scale:
        raise ValueError("the group outer-product sums do not add up to outer_sum; the statistics are inconsistent.")


def _merged_groups(
    mine: tuple[Tensor, Tensor, Tensor] | None, theirs: tuple[Tensor, Tensor, Tensor] | None
) -> tuple[Tensor, Tensor, Tensor] | None:
    if mine is None or theirs is None or len(mine[0]) != len(theirs[0]):
        return None
    return mine[0] + theirs[0], mine[1] + theirs[1], mine[2] + theirs[2]


def _metadata_of(stats: FeatureStats) -> dict[str, str]:
    return {key: getattr(stats, key) for key in METADATA_KEYS}
