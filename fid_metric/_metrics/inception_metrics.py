"""``InceptionMetrics``: FID, sFID, Inception Score, FID-infinity and a standard error from one Inception pass.

The numbers ADM, DiT and EDM print, as accumulators over the same Inception outputs
(``fid_metric._states``), all sums, so that the one all_reduce combines them across processes:

* FID: as ``FrechetInceptionDistance``;
* sFID (ADM's evaluator): mean and covariance of the (N, 2023) ``mixed_6/conv[..., :7]`` features, real and
  generated (see ``fid_metric._features.inception`` for the layer and its NHWC ordering);
* Inception Score (generated images only), per split, exactly torch-fidelity's and ADM's per-split formula; the
  mean over splits and its population standard deviation, with the splits of either (``split_size``: ADM's,
  ``split_seed``: torch-fidelity's) or interleaved by position (the default);
* FID-infinity and the jackknife standard error of FID from G groups of the generated images (Chong &
  Forsyth, "Effectively Unbiased FID and Inception Score and where to find them", CVPR 2020); ``compute()``
  then evaluates 2 G + 1 Fréchet distances.

Precision/Recall, Density/Coverage and KID (``fid_metric._functional``) need the FID features themselves, so
asking for them keeps those (``fid_metric._states.kept_features``: list states, float32 for the Inception
network's features, gathered once per side at ``compute()``).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from fid_metric._checks import checked_bool, checked_int
from fid_metric._features.inception import FEATURE_DIMS
from fid_metric._functional.covariance import mean_and_covariance
from fid_metric._functional.density_coverage import density_coverage_given_radii
from fid_metric._functional.distance import frechet_distance
from fid_metric._functional.jackknife import jackknife_stderr
from fid_metric._functional.kid import kernel_inception_distance
from fid_metric._functional.pairwise import kth_neighbour_radii
from fid_metric._functional.precision_recall import precision_recall_given_radii
from fid_metric._metrics.frechet import FrechetMetric
from fid_metric._states.gaussian_sums import GaussianSums, GroupSums
from fid_metric._states.kept_features import KeptFeatures
from fid_metric._states.split_scores import split_scores

_SFID = GaussianSums(
    "spatial", "spatial", FEATURE_DIMS["spatial"], count_of="features", extra_names=("mu_s", "sigma_s")
)


class InceptionMetrics(FrechetMetric):
    """FID plus, from the same Inception forward pass, sFID, Inception Score and FID-infinity.

    ``compute()`` returns a dict of 0-d float64 tensors for ``self.log_dict``: ``fid``;
    ``sfid`` if ``sfid``; ``inception_score`` and ``inception_score_std`` if ``inception_score``;
    ``fid_infinity`` and ``fid_stderr`` if ``fid_groups``; ``precision`` and ``recall`` if ``precision_recall``;
    ``density`` and ``coverage`` if ``density_coverage``; ``kid`` and ``kid_std`` if ``kid``; with ``fid_groups``,
    also ``sfid_stderr`` and ``precision_stderr``, ``recall_stderr``, ``density_stderr``, ``coverage_stderr``,
    ``kid_stderr`` for those asked (delete-a-group jackknife over the generated images' groups, as ``fid_stderr``:
    the noise of the generated sample, with the real side fixed). The FID is the one
    ``FrechetInceptionDistance``
    computes from the same arguments and images. After ``compute()``, ``fid_by_size`` holds the
    ``(sample sizes, FID)`` pairs behind ``fid_infinity``.

    Args:
        sfid: also compute sFID.
        inception_score: also compute the Inception Score of the generated images.
        splits: number of Inception Score splits. Which images a split holds (``SplitScores``): by default the
            image at sampler position j is in split ``j % splits``; ``split_size=S`` makes consecutive splits of
            S images in sample order, as ADM's evaluator (S = 5000; ``splits`` is then the most there may be, and
            splits no image reached are left out); ``split_seed=s`` makes torch-fidelity's (numpy's
            ``RandomState(s)`` shuffle of the ``dataset_size`` images, which must be given, then ``splits``
            equal chunks; its ``rng_seed`` default is 2020). ``splits=1``: every convention is the same.
        split_size: ADM's consecutive splits of this many images (see ``splits``); not with ``split_seed``.
        split_seed: torch-fidelity's shuffled splits with this seed (see ``splits``); not with ``split_size``.
        fid_groups: G >= 2 groups of generated images for FID-infinity and the standard errors; 0 for none.
            Memory: ``G * d * d * 8`` bytes (G = 10, d = 2048: 336 MB), and as much again for sFID's 2023-d
            features with ``sfid``.
        precision_recall: also compute improved Precision and Recall (Kynkäänniemi et al. 2019) on the FID
            features, with ``prc_neighborhood`` = k nearest neighbours (3, as guided-diffusion and torch-fidelity).
        density_coverage: also compute Density and Coverage (Naeem et al. 2020) on the FID features, with
            ``dc_neighborhood`` = k nearest neighbours (5, as prdc).
        kid: also compute KID (cubic polynomial kernel) on the FID features: the mean and population std of the
            unbiased MMD^2 over ``kid_subsets`` random subsets of ``kid_subset_size`` images per side, drawn from
            the sample positions as torch-fidelity draws them (numpy's ``RandomState(kid_seed)``, generated side
            first), so the defaults (100 subsets of 1000, seed 2020) give torch-fidelity's KID, and 1 and W
            processes use the same subsets; ``kid_subset_size=None``: the unbiased estimate over all pairs,
            ``kid_std`` 0.
        features_on_cpu: keep the features that precision/recall, density/coverage and KID need in host memory
            rather than on the metric's device (``N * d * 4`` bytes per side: 410 MB for 50,000 x 2048).
        feature: as for ``FrechetInceptionDistance``, but an Inception layer unless ``sfid`` and
            ``inception_score`` are off (they need the Inception network; FID, FID-infinity, precision/recall,
            density/coverage and KID work on any features, e.g. ``DINOv2Features``).
        kwargs: every other argument of ``FrechetInceptionDistance``. With ``real_stats`` and ``sfid``, the file
            must hold ADM's ``mu_s`` and ``sigma_s``.

    All arguments are keyword-only.
    """

    plot_lower_bound = 0.0

    def __init__(
        self,
        *,
        sfid: bool = True,
        inception_score: bool = True,
        splits: int = 1,
        fid_groups: int = 0,
        feature: int | nn.Module = 2048,
        precision_recall: bool = False,
        prc_neighborhood: int = 3,
        density_coverage: bool = False,
        dc_neighborhood: int = 5,
        kid: bool = False,
        kid_subsets: int = 100,
        kid_subset_size: int | None = 1000,
        kid_seed: int = 2020,
        features_on_cpu: bool = False,
        split_size: int | None = None,
        split_seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.sfid, self.inception_score = checked_bool("sfid", sfid), checked_bool("inception_score", inception_score)
        if (sfid or inception_score) and (not isinstance(feature, int) or isinstance(feature, bool)):
            raise TypeError(
                "sFID and the Inception Score need an Inception `feature` (64, 192, 768 or 2048), not a module; "
                "with sfid=False and inception_score=False any feature module works."
            )
        self.splits, scores = splits, split_scores(splits, split_size, split_seed)
        if checked_int("fid_groups", fid_groups, 0, what="0 (off) or an int >= 2") == 1:
            raise ValueError("`fid_groups` must be 0 (off) or an int >= 2, got 1.")
        self.fid_groups = fid_groups
        self.precision_recall = checked_bool("precision_recall", precision_recall)
        self.prc_neighborhood = cast(int, checked_int("prc_neighborhood", prc_neighborhood, 1))
        self.density_coverage = checked_bool("density_coverage", density_coverage)
        self.dc_neighborhood = cast(int, checked_int("dc_neighborhood", dc_neighborhood, 1))
        self.kid, self.kid_subsets = checked_bool("kid", kid), cast(int, checked_int("kid_subsets", kid_subsets, 1))
        self.kid_subset_size = checked_int(
            "kid_subset_size", kid_subset_size, 2, none=True, what="an int >= 2 or None (all pairs)"
        )
        self.kid_seed = cast(int, checked_int("kid_seed", kid_seed, 0))
        super().__init__(feature=feature, **kwargs)
        kept = precision_recall or density_coverage or kid
        if kept and self._reference is not None:
            raise ValueError(
                "precision_recall, density_coverage and kid need the real images' features; `real_stats` holds only "
                "their mean and covariance. Feed the real images (update(imgs, real=True)) instead."
            )
        if sfid and self._reference is not None and not {"mu_s", "sigma_s"} <= set(self._reference.stats.extra):
            raise ValueError("sfid=True with `real_stats` needs a file holding 'mu_s' and 'sigma_s' (ADM's format).")
        output = self._extractor.feature_output
        self._scores = scores if inception_score else None
        self._groups = GroupSums(fid_groups, self.num_features, output) if fid_groups else None
        spatial = GroupSums(fid_groups, _SFID.dim, _SFID.output, name="spatial_group") if fid_groups and sfid else None
        self._sfid_groups = spatial
        on_cpu = checked_bool("features_on_cpu", features_on_cpu)
        self._kept = KeptFeatures(output, self.num_features, on_cpu=on_cpu) if kept else None
        accumulators = (_SFID if sfid else None, self._scores, self._groups, self._sfid_groups, self._kept)
        self._register(*(a for a in accumulators if a))

    @property
    def fid_by_size(self) -> tuple[Tensor, Tensor] | None:
        """The ``(sample sizes, FID)`` pairs behind ``fid_infinity``, from the last ``compute()``; None before it
        and after any change of the states (``update``, ``reset``, ``merge_state``, ``load_state_dict``, ...)."""
        return self._derived.get("fid_by_size")

    @property
    def fid_leave_one_out(self) -> Tensor | None:
        """The ``(G,)`` FIDs without each of the ``fid_groups`` groups of generated images, from the last
        ``compute()``, behind ``fid_stderr`` and ``fid_metric.compare``; None before it and after any change of the
        states."""
        return self._derived.get("fid_leave_one_out")

    def _compute_configuration(self) -> dict[str, object]:
        return {
            "sfid": self.sfid,
            "inception_score": self.inception_score,
            "splits": self.splits,
            "fid_groups": self.fid_groups,
            "precision_recall": self.precision_recall,
            "prc_neighborhood": self.prc_neighborhood,
            "density_coverage": self.density_coverage,
            "dc_neighborhood": self.dc_neighborhood,
            "kid": self.kid,
            "kid_subsets": self.kid_subsets,
            "kid_subset_size": self.kid_subset_size,
            "kid_seed": self.kid_seed,
        }

    def compute(self) -> dict[str, Tensor]:
        """The requested metrics over everything accumulated (all processes under DDP), 0-d float64 tensors."""
        self._check_counts()
        real = self._real_side()  # factored once for FID and every FID-infinity group distance
        results = {"fid": self._fid(*real)}
        if self.sfid:
            results.update(self._sfid())
        if self._scores is not None:
            results["inception_score"], results["inception_score_std"] = self._scores.score(self)
        if self._groups is not None:

            def fid_of(count: Tensor, total: Tensor, outer: Tensor) -> Tensor:
                mu, sigma = mean_and_covariance(count, total, outer)
                return frechet_distance(real[0], real[1], mu, sigma, sigma1_factor=real[2])

            extrapolated = self._groups.extrapolate(self, fid_of, results["fid"])
            results["fid_infinity"], results["fid_stderr"] = extrapolated[:2]
            self._derived["fid_leave_one_out"], self._derived["fid_by_size"] = extrapolated[2:]
        if self._kept is not None:
            results.update(self._from_kept_features(self._kept))
        return results

    def _from_kept_features(self, kept: KeptFeatures) -> dict[str, Tensor]:
        """Precision, recall, density, coverage and KID as asked; with ``fid_groups``, each one's delete-a-group
        jackknife standard error over the generated images' groups (``precision_stderr``, ..., ``kid_stderr``)."""
        real, fake = kept.features(self, "real"), kept.features(self, "fake")
        results = self._kept_numbers(real, fake)  # checks the sets before any radius is reused
        if self._groups is not None:  # fake's rows are in the sampler's order: row j is in group j % G
            group = torch.arange(len(fake), device=fake.device) % self.fid_groups
            neighbourhoods = (
                (self.prc_neighborhood, self.precision_recall),
                (self.dc_neighborhood, self.density_coverage),
            )
            radii = {k: kth_neighbour_radii(real, k) for k in {k for k, asked in neighbourhoods if asked}}
            dropped = [self._kept_numbers(real, fake[group != g], radii) for g in range(self.fid_groups)]
            for name in [name for name in results if name != "kid_std"]:
                results[f"{name}_stderr"] = jackknife_stderr(torch.stack([d[name] for d in dropped]))
        return results

    def _kept_numbers(self, real: Tensor, fake: Tensor, radii: dict[int, Tensor] | None = None) -> dict[str, Tensor]:
        """The kept-feature numbers asked for; ``radii``: ``real``'s k-th neighbour radii by k, where known."""
        results, radii = {}, radii or {}
        if self.precision_recall:
            k = self.prc_neighborhood
            results["precision"], results["recall"] = precision_recall_given_radii(
                real, fake, k=k, real_radii=radii.get(k)
            )
        if self.density_coverage:
            k = self.dc_neighborhood
            results["density"], results["coverage"] = density_coverage_given_radii(
                real, fake, k=k, real_radii=radii.get(k)
            )
        if self.kid:
            results["kid"], results["kid_std"] = kernel_inception_distance(  # generated first, as torch-fidelity
                fake, real, subsets=self.kid_subsets, subset_size=self.kid_subset_size, seed=self.kid_seed
            )
        return results

    def _sfid(self) -> dict[str, Tensor]:
        """sFID and, with ``fid_groups``, its jackknife standard error (``sfid_stderr``)."""
        mu_fake, sigma_fake = _SFID.mean_and_covariance(self, "fake")
        if self._reference is not None:
            mu_real, sigma_real, factor = self._reference.extra_on("mu_s", "sigma_s", mu_fake.device)
        else:
            mu_real, sigma_real, factor = _SFID.factored(self, "real")  # 2023-d: singular below 2024 images
        results = {"sfid": frechet_distance(mu_real, sigma_real, mu_fake, sigma_fake, sigma1_factor=factor)}
        if self._sfid_groups is not None:

            def sfid_of(count: Tensor, total: Tensor, outer: Tensor) -> Tensor:
                mu, sigma = mean_and_covariance(count, total, outer)
                return frechet_distance(mu_real, sigma_real, mu, sigma, sigma1_factor=factor)

            results["sfid_stderr"] = jackknife_stderr(self._sfid_groups.leave_one_out(self, sfid_of))
        return results
