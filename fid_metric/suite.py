"""``InceptionMetrics``: FID, sFID, Inception Score, FID-infinity and a standard error from one Inception pass.

Every statistic is a sum, so all of them are states that the one coalesced all_reduce of the FID metric
combines across processes:

* sFID (ADM's evaluator): mean and covariance of the (N, 2023) ``mixed_6/conv[..., :7]`` features, real and
  generated, as sums like FID's (see ``fid_metric.inception`` for the layer and its NHWC ordering).
* Inception Score (generated images only): per split k, the count n_k, the sum over images of
  ``sum_c p_c log p_c`` and the sum of the class probabilities p (softmax of the 1008 logits without bias,
  in float64), which give ``IS_k = exp(S_plogp / n_k - sum_c q_c log q_c)`` with ``q = S_p / n_k``
  exactly: the per-split formula of torch-fidelity's ``isc_features_to_metric``. The mean over splits and
  its population standard deviation (``np.std``, as torch-fidelity) are returned.
* FID groups (generated images only, opt-in with ``fid_groups=G``): the sums of G disjoint groups. FID on
  the union of the first m groups, m = 1..G, gives FID at G sample sizes; the least-squares line
  ``FID = a + b / N`` through them extrapolates to FID-infinity = a (Chong & Forsyth, "Effectively Unbiased
  FID and Inception Score and where to find them", CVPR 2020). The delete-a-group jackknife over the G
  groups gives the standard error of FID: ``sqrt((G - 1) / G * sum_k (F_-k - mean F_-k)^2)``. Memory:
  ``G * d * d * 8`` bytes (G = 10, d = 2048: 336 MB); compute() evaluates 2 G + 1 Fréchet distances.

Split and group membership are deterministic: the image at position j of the sampler's order belongs to
split ``j % splits`` and group ``j % fid_groups``. Position j is counted per process as in a
``DistributedSampler``: the i-th image process r of W is given is position ``r + i * W``, so the membership,
and every number returned, is the same on 1 or W processes. (torch-fidelity shuffles before splitting,
so only ``splits=1`` is comparable with it.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fid_metric.distance import CovarianceFactor, frechet_distance
from fid_metric.inception import FEATURE_DIMS
from fid_metric.metric import FrechetInceptionDistance
from fid_metric.stats import FeatureStats, mean_and_covariance

_SPATIAL_DIM = FEATURE_DIMS["spatial"]
_CLASSES = FEATURE_DIMS["logits_unbiased"]


class InceptionMetrics(FrechetInceptionDistance):
    """FID plus, from the same Inception forward pass, sFID, Inception Score and FID-infinity.

    ``compute()`` returns a dict of 0-d float64 tensors for ``self.log_dict``: ``fid`` always;
    ``sfid`` if ``sfid``; ``inception_score`` and ``inception_score_std`` if ``inception_score``;
    ``fid_infinity`` and ``fid_stderr`` if ``fid_groups``. The FID is the one ``FrechetInceptionDistance``
    computes from the same arguments and images. After ``compute()``, ``fid_by_size`` holds the
    ``(sample sizes, FID)`` pairs behind ``fid_infinity``.

    Args:
        sfid: also compute sFID.
        inception_score: also compute the Inception Score of the generated images.
        splits: number of Inception Score splits (1 matches torch-fidelity's ``isc_splits=1``).
        fid_groups: G >= 2 groups of generated images for FID-infinity and the standard error; 0 for none.
        feature, and every other argument: as for ``FrechetInceptionDistance``, except that ``feature``
            must be an Inception layer (sFID and IS need the Inception network). With ``real_stats`` and
            ``sfid``, the file must hold ADM's ``mu_s`` and ``sigma_s``.
    """

    def __init__(
        self,
        sfid: bool = True,
        inception_score: bool = True,
        splits: int = 1,
        fid_groups: int = 0,
        feature: int = 2048,
        **kwargs: Any,
    ) -> None:
        if not isinstance(feature, int) or isinstance(feature, bool):
            raise TypeError("InceptionMetrics needs an Inception `feature` (64, 192, 768 or 2048), not a module.")
        if not isinstance(splits, int) or splits < 1:
            raise ValueError(f"`splits` must be a positive int, got {splits!r}.")
        if not isinstance(fid_groups, int) or fid_groups < 0 or fid_groups == 1:
            raise ValueError(f"`fid_groups` must be 0 (off) or an int >= 2, got {fid_groups!r}.")
        super().__init__(feature=feature, **kwargs)
        self.sfid, self.inception_score, self.splits, self.fid_groups = sfid, inception_score, splits, fid_groups
        self.fid_by_size: tuple[Tensor, Tensor] | None = None
        if sfid and self._reference is not None and not {"mu_s", "sigma_s"} <= set(self._reference.extra):
            raise ValueError("sfid=True with `real_stats` needs a file holding 'mu_s' and 'sigma_s' (ADM's format).")

        f64 = {"dtype": torch.float64}
        if sfid:
            keep_real = not self.reset_real_features and self._reference is None
            d = _SPATIAL_DIM
            for side in ("real", "fake"):
                persistent = keep_real and side == "real"
                self.add_state(f"{side}_spatial_sum", torch.zeros(d, **f64), "sum", persistent=persistent)
                self.add_state(f"{side}_spatial_cov_sum", torch.zeros(d, d, **f64), "sum", persistent=persistent)
                self._symmetric_states.add(f"{side}_spatial_cov_sum")
            self._real_states += ["real_spatial_sum", "real_spatial_cov_sum"]
        if inception_score:
            self.add_state("is_plogp_sum", torch.zeros(splits, **f64), "sum")
            self.add_state("is_p_sum", torch.zeros(splits, _CLASSES, **f64), "sum")
            self.add_state("is_num_samples", torch.zeros(splits, dtype=torch.int64), "sum")
        if fid_groups:
            d = self.num_features
            self.add_state("fake_group_sum", torch.zeros(fid_groups, d, **f64), "sum")
            self.add_state("fake_group_cov_sum", torch.zeros(fid_groups, d, d, **f64), "sum")
            self.add_state("fake_group_num_samples", torch.zeros(fid_groups, dtype=torch.int64), "sum")
            self._symmetric_states.add("fake_group_cov_sum")

    @property
    def _network_outputs(self) -> tuple[str, ...]:
        return (
            self._feature_output,
            *(("spatial",) if self.sfid else ()),
            *(("logits_unbiased",) if self.inception_score else ()),
        )

    def _accumulate(self, side: str, outputs: dict[str, Tensor], first: int) -> None:
        super()._accumulate(side, outputs, first)
        if self.sfid:
            spatial = self._as_state(outputs["spatial"])
            getattr(self, f"{side}_spatial_sum").add_(spatial.sum(0))
            getattr(self, f"{side}_spatial_cov_sum").addmm_(spatial.T, spatial)
        if side == "real" or not (self.inception_score or self.fid_groups):
            return
        # Positions are known on the host, so the split/group indices cost no device synchronisation.
        positions = self._sampler_positions(first, outputs[self._feature_output].shape[0])
        device = self._state_device
        if self.inception_score:
            log_p = self._as_state(outputs["logits_unbiased"]).log_softmax(dim=1)
            p = log_p.exp()
            split = _index([j % self.splits for j in positions], device)
            self.is_plogp_sum.index_add_(0, split, (p * log_p).sum(1))
            self.is_p_sum.index_add_(0, split, p)
            self.is_num_samples.index_add_(0, split, torch.ones_like(split))
        if self.fid_groups:
            features = self._as_state(outputs[self._feature_output])
            groups = [j % self.fid_groups for j in positions]
            for g in sorted(set(groups)):
                rows = features.index_select(0, _index([i for i, h in enumerate(groups) if h == g], device))
                self.fake_group_sum[g].add_(rows.sum(0))
                self.fake_group_cov_sum[g].addmm_(rows.T, rows)
                self.fake_group_num_samples[g].add_(rows.shape[0])

    def _sampler_positions(self, first: int, count: int) -> list[int]:
        """Positions ``r + i * W`` in the sampler's order of this process's images first..first+count-1."""
        world, rank = self._world_and_rank()
        return [rank + (first + i) * world for i in range(count)]

    def compute(self) -> dict[str, Tensor]:
        """The requested metrics over everything accumulated (all processes under DDP), 0-d float64 tensors."""
        self._check_counts()
        real = self._real_side()  # factored once for FID and every FID-infinity group distance
        results = {"fid": self._fid(*real)}
        if self.sfid:
            results["sfid"] = self._sfid()
        if self.inception_score:
            results["inception_score"], results["inception_score_std"] = self._inception_score()
        if self.fid_groups:
            results["fid_infinity"], results["fid_stderr"] = self._fid_infinity(real, results["fid"])
        return results

    def _sfid(self) -> Tensor:
        n_fake = int(self.fake_features_num_samples)
        mu_fake, sigma_fake = mean_and_covariance(n_fake, self.fake_spatial_sum, self.fake_spatial_cov_sum)
        if self._reference is not None:
            device = mu_fake.device
            return frechet_distance(
                self._reference.extra["mu_s"].to(device),
                self._reference.extra["sigma_s"].to(device),
                mu_fake,
                sigma_fake,
            )
        n_real = int(self.real_features_num_samples)
        mu_real, sigma_real = mean_and_covariance(n_real, self.real_spatial_sum, self.real_spatial_cov_sum)
        return frechet_distance(mu_real, sigma_real, mu_fake, sigma_fake)

    def _inception_score(self) -> tuple[Tensor, Tensor]:
        n = self.is_num_samples.to(torch.float64)
        if bool((n < 1).any()):
            raise RuntimeError(
                f"The Inception Score needs at least one generated image per split; got {n.tolist()} over "
                f"{self.splits} splits."
            )
        q = self.is_p_sum / n[:, None]
        scores = (self.is_plogp_sum / n - torch.special.xlogy(q, q).sum(1)).exp()
        return scores.mean(), scores.std(unbiased=False)

    def _fid_infinity(self, real: tuple[Tensor, Tensor, CovarianceFactor], fid: Tensor) -> tuple[Tensor, Tensor]:
        """FID-infinity and the jackknife standard error, given the real side and the FID of all groups."""
        mu_real, sigma_real, factor = real
        n = self.fake_group_num_samples.to(torch.float64)
        if bool((n < 2).any()):
            raise RuntimeError(f"FID-infinity needs at least 2 generated images per group; got {n.tolist()}.")

        def fid_of(count: Tensor, total: Tensor, outer: Tensor) -> Tensor:
            mu, sigma = mean_and_covariance(count, total, outer)
            return frechet_distance(mu_real, sigma_real, mu, sigma, sigma1_factor=factor)

        sums, outers = self.fake_group_sum.cumsum(0), self.fake_group_cov_sum.cumsum(0)
        sizes = n.cumsum(0)
        # The union of all G groups is every generated image: its FID is the one already computed.
        by_size = torch.stack([*(fid_of(sizes[m], sums[m], outers[m]) for m in range(self.fid_groups - 1)), fid])
        design = torch.stack([torch.ones_like(sizes), 1 / sizes], dim=1)
        # An extrapolation can land below 0 when FID is near 0; a distance cannot.
        intercept = torch.linalg.lstsq(design, by_size[:, None]).solution[0, 0].clamp_min(0)
        self.fid_by_size = (sizes, by_size)

        leave_one_out = torch.stack(
            [
                fid_of(sizes[-1] - n[k], sums[-1] - self.fake_group_sum[k], outers[-1] - self.fake_group_cov_sum[k])
                for k in range(self.fid_groups)
            ]
        )
        g = self.fid_groups
        stderr = ((g - 1) / g * (leave_one_out - leave_one_out.mean()).square().sum()).sqrt()
        return intercept, stderr

    def _real_stats_to_save(self) -> FeatureStats:
        # With sFID, the file also holds ADM's mu_s / sigma_s, so it can serve as `real_stats` for sFID.
        stats = self.statistics(real=True)
        if self.sfid:
            with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync):
                mu_s, sigma_s = mean_and_covariance(stats.n, self.real_spatial_sum, self.real_spatial_cov_sum)
            stats.extra.update(mu_s=mu_s.cpu(), sigma_s=sigma_s.cpu())
        return stats


def _index(values: list[int], device: torch.device) -> Tensor:
    """An int64 index tensor on ``device``, copied from pinned memory so that it does not wait for the GPU."""
    index = torch.tensor(values, dtype=torch.int64)
    return index if device.type == "cpu" else index.pin_memory().to(device, non_blocking=True)
