"""``InceptionMetrics``: FID, sFID, Inception Score, FID-infinity and a standard error from one Inception pass.

The numbers ADM, DiT and EDM print, as accumulators over the same Inception outputs (``fid_metric.accumulators``),
all sums, so that the one all_reduce combines them across processes:

* FID: as ``FrechetInceptionDistance``;
* sFID (ADM's evaluator): mean and covariance of the (N, 2023) ``mixed_6/conv[..., :7]`` features, real and
  generated (see ``fid_metric.inception`` for the layer and its NHWC ordering);
* Inception Score (generated images only), per split, exactly torch-fidelity's per-split formula; the mean over
  splits and its population standard deviation (torch-fidelity shuffles before splitting, so only
  ``splits=1`` is comparable with it);
* FID-infinity and the jackknife standard error of FID from G groups of the generated images (Chong &
  Forsyth, "Effectively Unbiased FID and Inception Score and where to find them", CVPR 2020); ``compute()``
  then evaluates 2 G + 1 Fréchet distances.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fid_metric.accumulators import GaussianSums, GroupSums, SplitScores
from fid_metric.core import FeatureSumsMetric
from fid_metric.distance import frechet_distance
from fid_metric.inception import FEATURE_DIMS
from fid_metric.stats import mean_and_covariance

_SFID = GaussianSums(
    "spatial", "spatial", FEATURE_DIMS["spatial"], count_of="features", extra_names=("mu_s", "sigma_s")
)


class InceptionMetrics(FeatureSumsMetric):
    """FID plus, from the same Inception forward pass, sFID, Inception Score and FID-infinity.

    ``compute()`` returns a dict of 0-d float64 tensors for ``self.log_dict``: ``fid`` if ``fid``;
    ``sfid`` if ``sfid``; ``inception_score`` and ``inception_score_std`` if ``inception_score``;
    ``fid_infinity`` and ``fid_stderr`` if ``fid_groups``. The FID is the one ``FrechetInceptionDistance``
    computes from the same arguments and images. After ``compute()``, ``fid_by_size`` holds the
    ``(sample sizes, FID)`` pairs behind ``fid_infinity``.

    Args:
        fid: compute the FID (default). ``fid=False, sfid=False`` gives the Inception Score alone, from generated
            images only, as torchmetrics' ``InceptionScore`` (``update(imgs, real=True)`` is then an error).
        sfid: also compute sFID.
        inception_score: also compute the Inception Score of the generated images.
        splits: number of Inception Score splits (1 matches torch-fidelity's ``isc_splits=1``).
        fid_groups: G >= 2 groups of generated images for FID-infinity and the standard error; 0 for none.
            Memory: ``G * d * d * 8`` bytes (G = 10, d = 2048: 336 MB).
        feature, and every other argument: as for ``FrechetInceptionDistance``, except that ``feature``
            must be an Inception layer (sFID and IS need the Inception network). With ``real_stats`` and
            ``sfid``, the file must hold ADM's ``mu_s`` and ``sigma_s``.
    """

    plot_lower_bound = 0.0

    def __init__(
        self,
        sfid: bool = True,
        inception_score: bool = True,
        splits: int = 1,
        fid_groups: int = 0,
        feature: int = 2048,
        fid: bool = True,
        **kwargs: Any,
    ) -> None:
        if not isinstance(feature, int) or isinstance(feature, bool):
            raise TypeError("InceptionMetrics needs an Inception `feature` (64, 192, 768 or 2048), not a module.")
        if not isinstance(splits, int) or splits < 1:
            raise ValueError(f"`splits` must be a positive int, got {splits!r}.")
        if not isinstance(fid_groups, int) or fid_groups < 0 or fid_groups == 1:
            raise ValueError(f"`fid_groups` must be 0 (off) or an int >= 2, got {fid_groups!r}.")
        if not fid and (sfid or fid_groups or not inception_score):
            raise ValueError(
                "fid=False computes the Inception Score alone: it needs inception_score=True, sfid=False and "
                "fid_groups=0 (sFID and FID-infinity compare with real images)."
            )
        super().__init__(feature=feature, **kwargs)
        self.fid = fid
        self.sfid, self.inception_score, self.splits, self.fid_groups = sfid, inception_score, splits, fid_groups
        self.fid_by_size: tuple[Tensor, Tensor] | None = None
        if sfid and self._reference is not None and not {"mu_s", "sigma_s"} <= set(self._reference.stats.extra):
            raise ValueError("sfid=True with `real_stats` needs a file holding 'mu_s' and 'sigma_s' (ADM's format).")
        if sfid:
            self._register(_SFID)
        if inception_score:
            self._register(SplitScores(splits, FEATURE_DIMS["logits_unbiased"]))
        if fid_groups:
            self._register(GroupSums(fid_groups, self.num_features, self._extractor.feature_output))

    def update(self, imgs: Tensor, real: bool) -> None:
        """As ``FrechetInceptionDistance.update``; with ``fid=False`` only generated images (``real=False``)."""
        if real and not self.fid:
            raise ValueError(
                "fid=False: the Inception Score uses generated images only; call update(imgs, real=False)."
            )
        super().update(imgs, real)

    def compute(self) -> dict[str, Tensor]:
        """The requested metrics over everything accumulated (all processes under DDP), 0-d float64 tensors."""
        if not self.fid:
            scores = next(a for a in self._accumulators if isinstance(a, SplitScores))
            mean, std = scores.score(self)
            return {"inception_score": mean, "inception_score_std": std}
        self._check_counts()
        real = self._real_side()  # factored once for FID and every FID-infinity group distance
        results = {"fid": self._fid(*real)}
        if self.sfid:
            results["sfid"] = self._sfid()
        if self.inception_score:
            scores = next(a for a in self._accumulators if isinstance(a, SplitScores))
            results["inception_score"], results["inception_score_std"] = scores.score(self)
        if self.fid_groups:
            groups = next(a for a in self._accumulators if isinstance(a, GroupSums))

            def fid_of(count: Tensor, total: Tensor, outer: Tensor) -> Tensor:
                mu, sigma = mean_and_covariance(count, total, outer)
                return frechet_distance(real[0], real[1], mu, sigma, sigma1_factor=real[2])

            results["fid_infinity"], results["fid_stderr"], self.fid_by_size = groups.extrapolate(
                self, fid_of, results["fid"]
            )
        return results

    def _sfid(self) -> Tensor:
        mu_fake, sigma_fake = _SFID.mean_and_covariance(self, "fake")
        if self._reference is not None:
            mu_real, sigma_real = self._reference.extra_on("mu_s", "sigma_s", mu_fake.device)
        else:
            mu_real, sigma_real = _SFID.mean_and_covariance(self, "real")
        return frechet_distance(mu_real, sigma_real, mu_fake, sigma_fake)
