"""Deprecated: ``fid_metric.suite`` was renamed ``fid_metric.inception_metrics`` in 0.2.

``from fid_metric import InceptionMetrics`` is the import to use; this module keeps the 0.1 path working, with a
``DeprecationWarning`` on first use.
"""

from __future__ import annotations

import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "InceptionMetrics":
        warnings.warn(
            "fid_metric.suite is deprecated; import InceptionMetrics from fid_metric (fid_metric.inception_metrics).",
            DeprecationWarning,
            stacklevel=2,
        )
        from fid_metric.inception_metrics import InceptionMetrics

        return InceptionMetrics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
