"""fid_metric: exact, fast, DDP-correct Fréchet Inception Distance as a torchmetrics Metric."""

from fid_metric.distance import frechet_distance
from fid_metric.metric import FrechetInceptionDistance
from fid_metric.weights import WeightsUnavailableError

__version__ = "0.1.0"
__all__ = ["FrechetInceptionDistance", "WeightsUnavailableError", "frechet_distance", "__version__"]
