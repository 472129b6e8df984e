"""fid_metric: exact, fast, DDP-correct Fréchet Inception Distance as a torchmetrics Metric.

Every public name is here; the modules under ``fid_metric._*`` are private. The names are imported on first use,
so that ``fid-metric --help`` answers before torch is imported. The package, by the data flow:

    _features    images -> preprocessing (compat) -> network (Inception, DINOv2, CLIP) -> features
    _states      features -> accumulators (float64 sums, kept rows) -> the DDP sync, checkpoints, merges
    _metrics     the torchmetrics Metrics: their states, update() and compute()
    _functional  numbers from features and statistics: Fréchet distance, KID, CMMD, Precision/Recall,
                 Density/Coverage
    _files       statistics files and image folders
    _cli         the fid-metric command
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fid_metric._version import __version__

if TYPE_CHECKING:
    from fid_metric._features.clip import CLIPFeatures
    from fid_metric._features.dinov2 import DINOv2Features
    from fid_metric._features.preprocess import ImageInputError
    from fid_metric._features.weights import WeightsUnavailableError
    from fid_metric._files.stats import FeatureStats, StatsMismatchError
    from fid_metric._functional.density_coverage import density_coverage
    from fid_metric._functional.distance import frechet_distance
    from fid_metric._functional.kid import kernel_inception_distance
    from fid_metric._functional.precision_recall import precision_recall
    from fid_metric._metrics.cmmd import CMMD
    from fid_metric._metrics.compare import Comparison, compare
    from fid_metric._metrics.fid import FrechetInceptionDistance
    from fid_metric._metrics.inception_metrics import InceptionMetrics
    from fid_metric._metrics.inception_score import InceptionScore

_MODULES = {
    "CLIPFeatures": "fid_metric._features.clip",
    "CMMD": "fid_metric._metrics.cmmd",
    "Comparison": "fid_metric._metrics.compare",
    "compare": "fid_metric._metrics.compare",
    "DINOv2Features": "fid_metric._features.dinov2",
    "FeatureStats": "fid_metric._files.stats",
    "FrechetInceptionDistance": "fid_metric._metrics.fid",
    "ImageInputError": "fid_metric._features.preprocess",
    "InceptionMetrics": "fid_metric._metrics.inception_metrics",
    "InceptionScore": "fid_metric._metrics.inception_score",
    "StatsMismatchError": "fid_metric._files.stats",
    "WeightsUnavailableError": "fid_metric._features.weights",
    "frechet_distance": "fid_metric._functional.distance",
    "kernel_inception_distance": "fid_metric._functional.kid",
    "precision_recall": "fid_metric._functional.precision_recall",
    "density_coverage": "fid_metric._functional.density_coverage",
}

__all__ = [
    "CLIPFeatures",
    "CMMD",
    "Comparison",
    "DINOv2Features",
    "FeatureStats",
    "FrechetInceptionDistance",
    "ImageInputError",
    "InceptionMetrics",
    "InceptionScore",
    "StatsMismatchError",
    "WeightsUnavailableError",
    "__version__",
    "compare",
    "density_coverage",
    "frechet_distance",
    "kernel_inception_distance",
    "precision_recall",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'fid_metric' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
