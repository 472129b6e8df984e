"""The Inception Score's accumulator: per-split sums over the generated images, and the score they give.

Every state is a sum over images, so the metric's one all_reduce combines them exactly; split membership is
fixed by an image's position in the sampler's order, so 1 and W processes put every image in the same split.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from fid_metric._checks import checked_int
from fid_metric._features.inception import FEATURE_DIMS
from fid_metric._states.accumulator import Accumulator, State, as_float64, index_on, state

_F64 = torch.float64


@dataclass(frozen=True)
class SplitScores(Accumulator):
    """The Inception Score of the generated images, per split k: the count ``is_num_samples[k]``, the sum over
    images of ``sum_c p_c log p_c`` (``is_plogp_sum[k]``) and of the class probabilities ``p`` (``is_p_sum[k]``,
    softmax of the 1008 logits without bias, in float64).

    Which split the image at sampler position j belongs to, one of three conventions:

    * default: ``j % splits`` (interleaved);
    * ``split_size=S``: ``j // S``, consecutive chunks of S images in sample order, the last one possibly
      smaller, as ADM's evaluator (``compute_inception_score(activations, split_size=5000)``) whose Inception
      Score the diffusion papers print; ``splits`` is then the most there may be;
    * ``seed=s``: torch-fidelity's ``isc_features_to_metric``: the N = ``metric.dataset_size`` samples shuffled
      by numpy's ``RandomState(s).permutation(N)``, then ``splits`` chunks ``[k N // splits, (k + 1) N //
      splits)`` of the shuffled order.

    All are fixed by position, so 1 and W processes put every image in the same split.
    """

    splits: int
    classes: int
    output: str = "logits_unbiased"
    split_size: int | None = None
    seed: int | None = None

    def defaults(self) -> dict[str, State]:
        return {
            "is_plogp_sum": torch.zeros(self.splits, dtype=_F64),
            "is_p_sum": torch.zeros(self.splits, self.classes, dtype=_F64),
            "is_num_samples": torch.zeros(self.splits, dtype=torch.int64),
        }

    def split_of(self, positions: range, dataset_size: int | None) -> list[int]:
        """The split of each sampler position.

        Raises:
            ValueError: a position beyond ``splits * split_size`` or, with ``seed``, beyond ``dataset_size`` (or
                no ``dataset_size``).
        """
        if self.seed is not None:
            if dataset_size is None or (len(positions) > 0 and positions[-1] >= dataset_size):
                raise ValueError(
                    f"torch-fidelity's Inception Score splits (seed={self.seed}) shuffle the whole set: they need "
                    f"`dataset_size`, the number of generated images, and got {dataset_size} for an image at "
                    f"position {positions[-1] if len(positions) else 0}."
                )
            table = _shuffled_splits(dataset_size, self.splits, self.seed)
            return [int(table[j]) for j in positions]
        if self.split_size is not None:
            splits = [j // self.split_size for j in positions]
            beyond = next((j for j, k in zip(positions, splits) if k >= self.splits), None)
            if beyond is not None:
                raise ValueError(
                    f"The Inception Score has {self.splits} splits of {self.split_size} images; the image at position "
                    f"{beyond} would be in split {beyond // self.split_size + 1}. Raise `splits` to at least "
                    f"ceil(N / {self.split_size}) for N generated images."
                )
            return splits
        return [j % self.splits for j in positions]

    def add(self, metric: Metric, side: str, outputs: dict[str, Tensor], positions: range) -> None:
        if side != "fake":
            return
        log_p = as_float64(outputs[self.output], state(metric, "is_p_sum")).log_softmax(dim=1)
        p = log_p.exp()
        split = index_on(self.split_of(positions, getattr(metric, "dataset_size", None)), p.device)
        state(metric, "is_plogp_sum").index_add_(0, split, (p * log_p).sum(1))
        state(metric, "is_p_sum").index_add_(0, split, p)
        state(metric, "is_num_samples").index_add_(0, split, torch.ones_like(split))

    def score(self, metric: Metric) -> tuple[Tensor, Tensor]:
        """The mean of the splits' ``IS_k = exp(S_plogp / n_k - sum_c q_c log q_c)``, ``q = S_p / n_k`` (torch-
        fidelity's and ADM's per-split formula), and their population standard deviation (``np.std``). With
        ``split_size``, the splits that no image reached are left out, as ADM's loop never makes them.

        Raises:
            RuntimeError: a split (one that should have images) has none.
        """
        n = state(metric, "is_num_samples").to(torch.float64)
        used = n > 0 if self.split_size is not None else torch.ones_like(n, dtype=torch.bool)
        if not bool(used.any()) or bool((n[used] < 1).any()):
            raise RuntimeError(
                f"The Inception Score needs at least one generated image per split; got {n.tolist()} over "
                f"{self.splits} splits."
            )
        n = n[used]
        q = state(metric, "is_p_sum")[used] / n[:, None]
        scores = (state(metric, "is_plogp_sum")[used] / n - torch.special.xlogy(q, q).sum(1)).exp()
        return scores.mean(), scores.std(unbiased=False)


def split_scores(splits: object, split_size: object = None, split_seed: object = None) -> SplitScores:
    """The Inception Score's accumulator for these arguments, checked.

    Raises:
        ValueError: ``splits`` or ``split_size`` is not a positive int, ``split_seed`` not a non-negative int, or
            both ``split_size`` and ``split_seed`` are given.
    """
    splits = checked_int("splits", splits, 1)
    split_size = checked_int("split_size", split_size, 1, none=True)
    split_seed = checked_int("split_seed", split_seed, 0, none=True)
    if split_size is not None and split_seed is not None:
        raise ValueError("Give `split_size` (ADM's consecutive splits) or `split_seed` (torch-fidelity's), not both.")
    return SplitScores(cast(int, splits), FEATURE_DIMS["logits_unbiased"], split_size=split_size, seed=split_seed)


@functools.lru_cache(maxsize=4)
def _shuffled_splits(n: int, splits: int, seed: int) -> np.ndarray:
    """``(n,)`` the split of each position under torch-fidelity's shuffle: position j lands at t = inverse
    permutation[j], in chunk ``ceil((t + 1) splits / n) - 1`` of ``[k n // splits, (k + 1) n // splits)``."""
    shuffled_position = np.empty(n, dtype=np.int64)
    shuffled_position[np.random.RandomState(seed).permutation(n)] = np.arange(n)
    return ((shuffled_position + 1) * splits + n - 1) // n - 1
