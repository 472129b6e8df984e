"""The feature extractor: a network, the preprocessing its reference uses, the outputs it emits, and what it is.

    images (N, C, H, W) -> check -> preprocess (compat) -> network -> named outputs, float32

Two kinds. The FID Inception network (``Extractor.inception``): uint8 or [0, 1] float images, checked, rounded
to uint8, resized and normalised as the ``compat`` reference does (``fid_metric._features.preprocess``), and any of the
outputs ``fid_metric._features.inception.OUTPUTS`` names. A custom module (``Extractor.custom``): the images exactly as
given to ``update``, as in torchmetrics, and one output, ``"features"``, ``(N, d)``.

The extractor lives outside the metric's module tree: never in ``state_dict`` (no 92 MB checkpoints), never
cast by Lightning's ``bf16-true``, never broadcast by DDP; ``on(device)`` moves it where the metric is. A
metric's copies (``deepcopy``, torchmetrics' ``clone``) share it: it is frozen.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn

from fid_metric._checks import checked_int
from fid_metric._features import weights
from fid_metric._features.arithmetic import network_math, network_memory_format
from fid_metric._features.inception import FEATURE_DIMS, INCEPTION_ID, POOL_FEATURES, FIDInceptionV3, fold_batch_norm
from fid_metric._features.preprocess import ImageInputError, check_images, inception_input, to_uint8_rgb

CUSTOM_OUTPUT = "features"


class Extractor:
    """A feature network and its identity.

    Attributes:
        module: the network.
        num_features: d of the FID features.
        feature_output: the name of the FID features among the outputs (``"2048"``, ..., or ``"features"``).
        extractor_id: e.g. ``"inception-2015-12-05/2048"``, a custom module's own ``extractor_id`` (e.g.
            ``"dinov2-vitl14-edm2/1024"``) or ``"custom:MyNet/128"``; recorded in statistics files and
            checkpoints.
        compat: the preprocessing pipeline, ``""`` for a custom module.
        weights_path: the Inception weights file, None for a custom module.
        memory_format: the layout of the module's 4-d weights, where known.
    """

    def __init__(
        self,
        module: nn.Module,
        num_features: int,
        feature_output: str,
        extractor_id: str,
        compat: str,
        weights_path: os.PathLike | None,
        memory_format: torch.memory_format | None,
    ) -> None:
        self.module = module
        self.num_features = num_features
        self.feature_output = feature_output
        self.extractor_id = extractor_id
        self.compat = compat
        self.weights_path = weights_path
        self.memory_format = memory_format

    @classmethod
    def inception(cls, feature: int | str, weights_path: str | os.PathLike | None, compat: str) -> Extractor:
        """The FID Inception network whose features are ``feature``: 64, 192, 768 or 2048 pool features, or
        ``"logits_unbiased"`` (the 1008 logits without bias, which the Inception Score reads).

        Raises:
            ValueError: another ``feature``, or weights that are not a finite pt_inception state dict.
            fid_metric.WeightsUnavailableError: no weights file could be found or downloaded.
        """
        if feature not in (*POOL_FEATURES, "logits_unbiased"):
            raise ValueError(
                f"Integer input to argument `feature` must be one of {POOL_FEATURES} (or an nn.Module), got {feature}."
            )
        path = weights.resolve(weights_path)
        network = _load_inception(path)
        dim, output = FEATURE_DIMS[str(feature)], str(feature)
        return cls(network, dim, output, f"{INCEPTION_ID}/{feature}", compat, path, torch.channels_last)

    @classmethod
    def custom(cls, module: nn.Module, normalize: bool, input_img_size: tuple[int, int, int]) -> Extractor:
        """A module mapping a batch of images to ``(N, d)`` features; d from its ``num_features`` attribute,
        else from its output on a dummy image of ``input_img_size``."""
        d = _custom_feature_dim(module, normalize, input_img_size)
        # A module that knows which definition its features are (DINOv2Features) says it; others by class.
        extractor_id = getattr(module, "extractor_id", None) or f"custom:{type(module).__qualname__}/{d}"
        return cls(module, d, CUSTOM_OUTPUT, str(extractor_id), "", None, None)

    @property
    def is_custom(self) -> bool:
        return self.weights_path is None

    @functools.cached_property
    def weights_sha256(self) -> str:
        """Hex SHA-256 of the weights file, computed on first use and remembered; "" for a custom module."""
        return "" if self.weights_path is None else weights.sha256_of(self.weights_path)

    def instance(self) -> dict[str, object]:
        """What tells this extractor apart from another of the same ``metadata`` within one process: the weights
        file's path (without hashing its 92 MB), or a custom module's instance (known by class and width only)."""
        if self.is_custom:
            return {"extractor_instance": id(self.module)}
        return {"weights": self.weights_path}

    def metadata(self, with_hash: bool = True) -> dict[str, str]:
        """What statistics files record about how their features were made (``FeatureStats`` fields)."""
        return {
            "extractor": self.extractor_id,
            "weights_sha256": self.weights_sha256 if with_hash else "",
            "compat": self.compat,
        }

    def on(self, device: torch.device, memory_format: torch.memory_format | None = None) -> nn.Module:
        """The network on ``device`` (and in ``memory_format``, if given), converted the first time it is needed so."""
        param = next(self.module.parameters(), None)
        if param is not None and param.device != device:
            self.module.to(device)
        if memory_format is not None and self.memory_format != memory_format:
            self.module.to(memory_format=memory_format)
            self.memory_format = memory_format
        return self.module

    def check(self, imgs: Tensor, normalize: bool) -> None:
        """Raise if ``imgs`` is not a batch this extractor accepts (a custom module: any non-scalar tensor)."""
        if not self.is_custom:
            check_images(imgs, normalize)
        elif not isinstance(imgs, Tensor) or imgs.ndim == 0:
            raise ImageInputError(f"Expected a batch of images as a torch.Tensor, got {type(imgs).__name__}.")

    def outputs(
        self,
        imgs: Tensor,
        names: tuple[str, ...],
        device: torch.device,
        arithmetic: str,
        shared: Callable[[Tensor], Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Checked images -> the named outputs, on ``device``, in the ``arithmetic`` mode; from the ``shared``
        network that ``torchmetrics.wrappers.FeatureShare`` set, if any (see ``shared_outputs``).

        Raises:
            ValueError: a custom module's or the shared network's output is not ``(N, d)``.
        """
        if shared is not None:
            return self.shared_outputs(shared, imgs, device)
        if self.is_custom:
            network = self.on(device)
            with network_math(device, arithmetic):
                features = network(imgs.to(device, non_blocking=True))
            return {CUSTOM_OUTPUT: self._checked_features(features, imgs.shape[0], "The custom feature extractor")}
        layout = network_memory_format(device, arithmetic)
        network = self.on(device, layout)
        with network_math(device, "exact"):
            x = inception_input(to_uint8_rgb(imgs.to(device, non_blocking=True), self.compat), self.compat)
        with network_math(device, arithmetic):
            return network(x.contiguous(memory_format=layout), names)

    def network(self, arithmetic: str, shared: Callable[[Tensor], Tensor] | None = None) -> nn.Module:
        """The network as torchmetrics' ``metric.inception`` is: the ``shared`` one if given, a custom module
        itself, else the Inception network as a ``FeatureNetwork`` in ``arithmetic``."""
        if shared is not None:
            return cast(nn.Module, shared)
        return self.module if self.is_custom else FeatureNetwork(self, arithmetic)

    def checked_shared(self, network: object, outputs: tuple[str, ...]) -> Callable[[Tensor], Tensor]:
        """``network``, the feature network ``torchmetrics.wrappers.FeatureShare`` gives a metric that reads the
        extractor ``outputs``, checked.

        Raises:
            TypeError: ``network`` is not callable.
            ValueError: the metric reads more than one output of a pass (a shared network gives one).
        """
        if not callable(network):
            raise TypeError(f"`inception` must be a module mapping images to features, got {type(network).__name__}.")
        if len(outputs) > 1:
            raise ValueError(
                f"This metric takes {len(outputs)} outputs of one Inception pass ({', '.join(outputs)}); a shared "
                "network gives one. Share the network between metrics that need only the FID features."
            )
        return cast(Callable[[Tensor], Tensor], network)

    def shared_outputs(
        self, network: Callable[[Tensor], Tensor], imgs: Tensor, device: torch.device
    ) -> dict[str, Tensor]:
        """A shared network's features of checked images, in its own dtype, on ``device``. The images are given
        as they came for a custom extractor and for uint8 RGB (the very tensor, so that FeatureShare's cache
        recognises it), else converted to uint8 RGB as this compat pipeline does.

        Raises:
            ValueError: the network's output is not ``(N, d)``.
        """
        plain = self.is_custom or (imgs.dtype == torch.uint8 and imgs.shape[1] == 3)
        features = network(imgs if plain else to_uint8_rgb(imgs, self.compat))
        return {
            self.feature_output: self._checked_features(features, imgs.shape[0], "The shared feature network").to(
                device
            )
        }

    def _checked_features(self, features: object, n: int, source: str) -> Tensor:
        """``features`` if they are an ``(n, d)`` tensor; else a ``ValueError`` naming ``source``."""
        if not isinstance(features, Tensor) or features.shape != (n, self.num_features):
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"{source} must return (N, {self.num_features}) features for a batch of N = {n}, got {shape}."
            )
        return features

    def check_finite(self, outputs: dict[str, Tensor], normalize: bool) -> None:
        """Raise if an output holds NaN or infinite values.

        A custom module can produce them; the Inception network, whose weights are checked finite when loaded,
        cannot on finite uint8 input, so on CUDA that case is not checked: the check reads a flag back from
        the GPU, a host synchronisation ``update()`` otherwise never makes (float input already makes one).
        """
        if not self.is_custom and not normalize and all(o.device.type == "cuda" for o in outputs.values()):
            return
        for name, output in outputs.items():
            if not bool(torch.isfinite(output).all()):
                source = "The custom feature extractor" if self.is_custom else f"Inception output {name!r}"
                raise ValueError(
                    f"{source} returned NaN or infinite values for this batch; it was not added to the statistics. "
                    "Check the extractor's weights and its input."
                )

    def __deepcopy__(self, memo: dict) -> Extractor:
        return self


class FeatureNetwork(nn.Module):
    """An Inception extractor as a module with torchmetrics' network interface: uint8 ``(N, 3, H, W)`` images ->
    ``(N, d)`` float32 FID features, on the images' device, in the given ``arithmetic``.

    What ``metric.inception`` returns, for ``torchmetrics.wrappers.FeatureShare`` and code that calls the
    network directly. It registers no parameters: the network stays outside every module tree (see the module
    docstring), also when another metric holds this module.
    """

    def __init__(self, extractor: Extractor, arithmetic: str) -> None:
        super().__init__()
        self.extractor = extractor
        self.arithmetic = arithmetic
        super().train(False)

    def train(self, mode: bool = True) -> FeatureNetwork:
        """No-op: the network never leaves eval mode (torchmetrics' ``metric.inception.training`` is False)."""
        return self

    def forward(self, imgs: Tensor) -> Tensor:
        self.extractor.check(imgs, normalize=False)
        output = self.extractor.feature_output
        return self.extractor.outputs(imgs, (output,), imgs.device, self.arithmetic)[output]

    def extra_repr(self) -> str:
        # FeatureShare compares str(network) to tell whether its metrics use one network
        return f"{self.extractor.extractor_id}, compat={self.extractor.compat!r}, arithmetic={self.arithmetic!r}"


def _load_inception(source: os.PathLike) -> FIDInceptionV3:
    with torch.device("meta"):  # no random initialisation of weights that the file replaces (half the load time)
        network = FIDInceptionV3()
    try:
        network.load_state_dict(weights.load_state_dict(source), strict=True, assign=True)
    except RuntimeError as err:
        raise RuntimeError(
            f"{source} is not a pt_inception-2015-12-05 state dict (as in pytorch-fid's "
            f"pt_inception-2015-12-05-6726825d.pth): {err}"
        ) from err
    # float32 whatever the file or torch.set_default_dtype says: the network's input is float32.
    network.to(torch.float32)
    if not all(bool(torch.isfinite(tensor).all()) for tensor in network.state_dict().values()):
        raise ValueError(f"{source} holds NaN or infinite weights.")
    return fold_batch_norm(network).to(memory_format=torch.channels_last)


def _custom_feature_dim(module: nn.Module, normalize: bool, input_img_size: tuple[int, int, int]) -> int:
    """Feature dimension of a custom extractor: its ``num_features``, else its output on a dummy image."""
    num_features = getattr(module, "num_features", None)
    if num_features is not None:
        if isinstance(num_features, Tensor):
            num_features = int(num_features.item())
        return cast(int, checked_int("num_features", num_features, 1, what="a positive int (the custom extractor's d)"))
    if normalize:
        dummy = torch.rand(1, *input_img_size)
    else:
        dummy = torch.randint(0, 256, (1, *input_img_size), dtype=torch.uint8)
    device = next(module.parameters(), dummy).device
    with torch.inference_mode():
        output = module(dummy.to(device))
    if not isinstance(output, Tensor) or output.ndim != 2 or output.shape[1] < 1:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(
            f"The custom extractor must map a batch of images to (N, d) features with d >= 1; for one dummy image of "
            f"shape {input_img_size} it returned {shape}. Give the module a `num_features` attribute or fix its output."
        )
    return int(output.shape[1])
