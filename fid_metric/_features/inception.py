"""The FID Inception network: TensorFlow's 2015-12-05 Inception v3 graph, rebuilt from torchvision's parts.

FID is defined on the features of one particular network, the ``inception-2015-12-05`` graph that the
original TTUR code loads, not torchvision's ImageNet Inception v3. The graph differs from torchvision's in
three places, which pytorch-fid (``FIDInceptionA/C/E_1/E_2``) and torch-fidelity reproduce the same way:

* average pools inside Mixed_5b-5d, 6b-6e and 7b exclude the zero padding (``count_include_pad=False``);
* the pooling branch of the last block, Mixed_7c, is a 3x3 *max* pool (stride 1, padding 1);
* the classifier has 1008 outputs.

Attribute names follow ``torchvision.models.Inception3`` with ``aux_logits=False``, so the state dict of
pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (and torch-fidelity's identical
``weights-inception-2015-12-05-6726825d.pth``) loads with ``strict=True``.

Outputs and the TensorFlow graph nodes they correspond to (spatial mean over the feature map where the
node is a feature map, as torch-fidelity and pytorch-fid do):

=========== ============ ========================================================
name        shape        TensorFlow node
=========== ============ ========================================================
"64"        (N, 64)      ``pool:0`` (after Conv2d_2b + 3x3 max pool), spatial mean
"192"       (N, 192)     ``pool_1:0`` (after Conv2d_4a + 3x3 max pool), spatial mean
"768"       (N, 768)     ``mixed_7/join:0`` (Mixed_6e), spatial mean
"spatial"   (N, 2023)    ``mixed_6/conv:0[..., :7]``, flattened in NHWC order (sFID)
"2048"      (N, 2048)    ``pool_3:0``, the standard FID feature
"logits_unbiased" (N, 1008) ``pool_3 @ W``, the logits without the bias (Inception Score)
"logits"    (N, 1008)    ``softmax/logits:0``
=========== ============ ========================================================

"spatial" is ADM's sFID feature (guided-diffusion ``evaluations/evaluator.py``: ``FID_SPATIAL_NAME =
"mixed_6/conv:0"``, then ``spatial[..., :7]`` and a reshape of the NHWC tensor to (N, 17 * 17 * 7)). In the
2015 graph the blocks after ``mixed_2`` (Mixed_5d) are ``mixed_3`` (Mixed_6a), ``mixed_4`` (6b), ``mixed_5``
(6c), ``mixed_6`` (6d); ``mixed_6/conv`` is its 1x1 branch, conv + batch norm + ReLU, which
torch-fidelity's weight conversion maps to ``Mixed_6d.branch1x1`` (``mixed_6/conv/conv2d_params`` ->
``Mixed_6d.branch1x1.conv``, ``mixed_6/conv/batchnorm`` -> ``Mixed_6d.branch1x1.bn``). Its (N, 192, 17, 17)
output, first 7 channels, permuted to (N, 17, 17, 7) and flattened, is therefore ordered exactly like ADM's
features, so the ``mu_s`` / ``sigma_s`` of ADM reference batches apply to it directly. "logits_unbiased" is
what torch-fidelity feeds its Inception Score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.inception import (
    BasicConv2d,
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE,
)

OUTPUTS = ("64", "192", "spatial", "768", "2048", "logits_unbiased", "logits")
POOL_FEATURES = (64, 192, 768, 2048)  # the FID feature layers: average-pooled outputs of these widths
INCEPTION_ID = "inception-2015-12-05"  # the network's name in statistics files and checkpoints
FEATURE_DIMS = {
    "64": 64,
    "192": 192,
    "spatial": 2023,
    "768": 768,
    "2048": 2048,
    "logits_unbiased": 1008,
    "logits": 1008,
}
SPATIAL_CHANNELS = 7


def _tf_avg_pool(x: Tensor) -> Tensor:
    # TensorFlow's 3x3 average pool with SAME padding divides by the number of real pixels under the window.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _spatial_mean(x: Tensor) -> Tensor:
    """``(N, C, H, W)`` -> ``(N, C)``, the same op as the references' ``adaptive_avg_pool2d(x, (1, 1))``."""
    return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)


class _FIDInceptionA(InceptionA):
    """torchvision's InceptionA with TensorFlow's padding-excluding average pool."""

    def _forward(self, x: Tensor) -> list[Tensor]:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_tf_avg_pool(x))
        return [branch1x1, branch5x5, branch3x3dbl, branch_pool]


class _FIDInceptionC(InceptionC):
    """torchvision's InceptionC with TensorFlow's padding-excluding average pool."""

    def _forward(self, x: Tensor) -> list[Tensor]:
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        branch7x7dbl = self.branch7x7dbl_3(self.branch7x7dbl_2(branch7x7dbl))
        branch7x7dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(branch7x7dbl))
        branch_pool = self.branch_pool(_tf_avg_pool(x))
        return [branch1x1, branch7x7, branch7x7dbl, branch_pool]


class _FIDInceptionE(InceptionE):
    """torchvision's InceptionE with TensorFlow's pooling: padding-excluding average (Mixed_7b) or max (Mixed_7c).

    The max pool in Mixed_7c is what the 2015-12-05 graph does, most likely a bug in that graph; FID is
    defined by it all the same.
    """

    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__(in_channels)
        self.max_pool = max_pool

    def _forward(self, x: Tensor) -> list[Tensor]:
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _tf_avg_pool(x)
        return [branch1x1, branch3x3, branch3x3dbl, self.branch_pool(pooled)]


class FIDInceptionV3(nn.Module):
    """The FID Inception v3. Input ``(N, 3, 299, 299)`` float32 in [-1, 1] (see ``preprocess.inception_input``).

    Always in eval mode (``train()`` is a no-op) and without gradients: batch-norm statistics are part of
    the definition of FID. ``forward(x, outputs)`` returns ``{name: (N, dim) float32}`` for the requested
    names and stops after the last layer it needs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = _FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = _FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = _FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = _FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = _FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = _FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = _FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = _FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = _FIDInceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FIDInceptionV3:
        """No-op: the network never leaves eval mode."""
        return self

    def forward(self, x: Tensor, outputs: Sequence[str] = ("2048",)) -> dict[str, Tensor]:
        """``(N, 3, 299, 299)`` float32 -> ``{name: (N, FEATURE_DIMS[name]) float32}`` for each name in ``outputs``.

        Raises:
            ValueError: a name is not one of ``OUTPUTS``.
        """
        unknown = set(outputs) - set(OUTPUTS)
        if unknown:
            raise ValueError(f"Unknown Inception outputs {sorted(unknown)}; available: {OUTPUTS}.")
        wanted = set(outputs)
        found: dict[str, Tensor] = {}

        def emit(name: str, value: Callable[[], Tensor]) -> bool:
            """Record output ``name`` if wanted; True once every wanted output is there."""
            if name in wanted:
                found[name] = value()
            return len(found) == len(wanted)

        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        if emit("64", lambda: _spatial_mean(x)):
            return found
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        if emit("192", lambda: _spatial_mean(x)):
            return found
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c):
            x = block(x)
        branches = self.Mixed_6d._forward(x)  # branches[0]: mixed_6/conv, the sFID layer
        if emit("spatial", lambda: branches[0][:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)):
            return found
        x = self.Mixed_6e(torch.cat(branches, 1))
        if emit("768", lambda: _spatial_mean(x)):
            return found
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        x = _spatial_mean(x)
        if emit("2048", lambda: x):
            return found
        if emit("logits_unbiased", lambda: x @ self.fc.weight.T):
            return found
        emit("logits", lambda: self.fc(x))
        return found


def fold_batch_norm(network: FIDInceptionV3) -> FIDInceptionV3:
    """Fold every batch norm into the convolution before it, in place; return ``network``.

    ``bn(conv(x)) = conv(x, W * s) + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)``, computed in
    float64 and rounded once to float32. It saves a pass over every activation map and moves features by
    float32 round-off, far inside the 1e-4 the reference tests demand. The folded network no longer has the
    pt_inception state-dict layout: fold after loading.
    """
    for module in network.modules():
        if isinstance(module, BasicConv2d) and isinstance(module.bn, nn.BatchNorm2d):
            conv, bn = module.conv, module.bn
            assert bn.running_var is not None and bn.running_mean is not None  # track_running_stats: always here
            scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
            weight = (conv.weight.double() * scale[:, None, None, None]).to(conv.weight.dtype)
            bias = (bn.bias.double() - bn.running_mean.double() * scale).to(conv.weight.dtype)
            conv.weight = nn.Parameter(weight, requires_grad=False)
            conv.bias = nn.Parameter(bias, requires_grad=False)
            module.bn = nn.Identity()
    return network
