"""fid_metric: exact, fast, DDP-correct Fréchet Inception Distance as a torchmetrics Metric."""

from fid_metric._version import __version__
from fid_metric.distance import frechet_distance
from fid_metric.inception_metrics import InceptionMetrics
from fid_metric.inception_score import InceptionScore
from fid_metric.metric import FrechetInceptionDistance
from fid_metric.preprocess import ImageInputError
from fid_metric.stats import FeatureStats, StatsMismatchError
from fid_metric.weights import WeightsUnavailableError

__all__ = [
    "FeatureStats",
    "FrechetInceptionDistance",
    "ImageInputError",
    "InceptionMetrics",
    "InceptionScore",
    "StatsMismatchError",
    "WeightsUnavailableError",
    "__version__",
    "frechet_distance",
]
