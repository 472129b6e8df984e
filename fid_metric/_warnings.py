"""Warnings that point at the user's line, not at the library frame that issued them."""

from __future__ import annotations

import os
import sys
import warnings

import torch

# A warning raised inside compute() points at the user's line that called it (or, when Lightning called it,
# at the user's line that started Lightning), not at the source of these packages.
_LIBRARIES = ("fid_metric", "torchmetrics", "torch", "lightning", "pytorch_lightning", "lightning_fabric")


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside fid_metric and the libraries calling it; rank 0
    only under ``torch.distributed``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
        return
    files = [getattr(sys.modules.get(name), "__file__", None) for name in _LIBRARIES]
    library_dirs = tuple(os.path.dirname(file) + os.sep for file in files if file)
    frame, level = sys._getframe(1), 2  # stacklevel 2: the frame that called warn_caller
    while frame is not None and frame.f_code.co_filename.startswith(library_dirs):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    warnings.warn(message, category, stacklevel=level)
