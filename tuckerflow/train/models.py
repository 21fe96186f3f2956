"""Convolutional networks for the training job, sized from the data.

Each builder takes the number of input channels, the image size and the number of classes, so
one name works for 8×8 digits as well as for 32×32 colour images.
"""

from __future__ import annotations

import numbers
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from tuckerflow.train.config import check_integer

__all__ = [
    "MODELS",
    "LeNet5",
    "ResNet",
    "build_model",
    "layer_parameter_counts",
    "lenet5",
    "resnet18",
    "vgg_small",
]


def _check_geometry(in_channels, image_size, num_classes):
    """Integers (not rounded): ``in_channels ≥ 1``, ``num_classes ≥ 2``, ``image_size`` a
    positive int or a pair ``(H, W)`` of them."""
    in_channels = check_integer(in_channels, "in_channels", 1)
    num_classes = check_integer(num_classes, "num_classes", 2)
    if isinstance(image_size, numbers.Integral) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    if isinstance(image_size, (str, bytes)) or not isinstance(image_size, Sequence):
        raise TypeError(f"image_size={image_size!r} must be a positive int or a pair (H, W)")
    if len(image_size) != 2:
        raise ValueError(f"image_size={tuple(image_size)} must be a positive int or a pair (H, W)")
    size = tuple(check_integer(v, f"image_size[{i}]", 1) for i, v in enumerate(image_size))
    return in_channels, size, num_classes


class LeNet5(nn.Module):
    """LeNet5 as in the Caffe example: conv 5×5 (20), pool, conv 5×5 (50), pool, FC 500, FC."""

    def __init__(self, in_channels: int, image_size: Sequence[int], num_classes: int) -> None:
        super().__init__()
        padding = _lenet5_padding(image_size)
        features = [_lenet5_side(side, padding) for side in image_size]
        if min(features) < 1:
            raise ValueError(
                f"image_size={tuple(image_size)} is too small for lenet5: its two 5×5 "
                "convolutions and 2×2 poolings need images of at least 4×4 pixels"
            )
        self.conv1 = nn.Conv2d(in_channels, 20, 5, padding=padding)
        self.conv2 = nn.Conv2d(20, 50, 5, padding=padding)
        self.pool = nn.MaxPool2d(2)
        with torch.no_grad():
            flat = self._features(torch.zeros(1, in_channels, *image_size)).shape[1]
        self.fc1 = nn.Linear(flat, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def _features(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        return torch.flatten(self.pool(torch.relu(self.conv2(x))), 1)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self._features(x))))


def _lenet5_padding(image_size):
    return 0 if min(image_size) >= 20 else 2


def _lenet5_side(side, padding):
    """Side of LeNet5's last feature map for an image side ``side`` (0: too small)."""
    for _ in range(2):
        side = side + 2 * padding - 4  # 5×5 convolution
        if side < 1:
            return 0
        side //= 2  # 2×2 max pooling
    return side


def lenet5(
    in_channels: int = 1, image_size: int | Sequence[int] = 28, num_classes: int = 10
) -> LeNet5:
    """LeNet5 as in the Caffe example: two 5×5 convolutions (20, 50 filters), FC 500, FC classes.

    Images smaller than 20 pixels are zero-padded by 2 in each convolution so that the network
    still applies (8×8 digits: 8 → 4 → 2).

    Examples
    --------
    >>> import torch
    >>> lenet5(1, 28, 10)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    in_channels, size, num_classes = _check_geometry(in_channels, image_size, num_classes)
    return LeNet5(in_channels, size, num_classes)


def vgg_small(
    in_channels: int = 1,
    image_size: int | Sequence[int] = 28,
    num_classes: int = 10,
    *,
    widths: Sequence[int] = (32, 64, 128),
) -> nn.Sequential:
    """A small VGG-style CNN: blocks of two 3×3 conv + BatchNorm + ReLU, then 2×2 max pooling.

    One block per entry of ``widths``; pooling is skipped once the feature map is 1 pixel
    wide, and a global average pool feeds the classifier, so any image size works.

    Examples
    --------
    >>> import torch
    >>> vgg_small(3, 8, 5)(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 5])
    """
    in_channels, size, num_classes = _check_geometry(in_channels, image_size, num_classes)
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise TypeError(f"widths={widths!r} must be a sequence of positive ints")
    if not widths:
        raise ValueError("widths=() gives no block; one width per block is needed")
    widths = [check_integer(w, f"widths[{i}]", 1) for i, w in enumerate(widths)]
    layers = []
    channels = in_channels
    side = min(size)
    for width in widths:
        for _ in range(2):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            channels = width
        if side >= 2:
            layers.append(nn.MaxPool2d(2))
            side //= 2
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    classifier = nn.Sequential(nn.Linear(channels, 256), nn.ReLU(), nn.Linear(256, num_classes))
    return nn.Sequential(OrderedDict(features=nn.Sequential(*layers), classifier=classifier))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3×3 stem without pooling, four stages of basic blocks, global pool."""

    def __init__(
        self, blocks: Sequence[int], in_channels: int, num_classes: int, *, width: int = 64
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages = []
        planes_in = width
        for index, count in enumerate(blocks):
            planes = width * 2**index
            stride = 1 if index == 0 else 2
            stage = []
            for block in range(count):
                stage.append(_BasicBlock(planes_in, planes, stride if block == 0 else 1))
                planes_in = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes_in, num_classes)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.pool(out), 1))


def resnet18(
    in_channels: int = 3,
    image_size: int | Sequence[int] = 32,
    num_classes: int = 10,
    *,
    width: int = 64,
) -> ResNet:
    """CIFAR-style ResNet18 (He et al. 2016): 2-2-2-2 basic blocks, widths 64-128-256-512.

    ``width`` scales all stages (``width=16`` gives a network small enough for CPU tests).

    Examples
    --------
    >>> import torch
    >>> resnet18(1, 8, 10, width=8)(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """
    in_channels, _, num_classes = _check_geometry(in_channels, image_size, num_classes)
    width = check_integer(width, "width", 1)
    return ResNet((2, 2, 2, 2), in_channels, num_classes, width=width)


#: Model name -> builder ``f(in_channels, image_size, num_classes)``.
MODELS = {"lenet5": lenet5, "vgg_small": vgg_small, "resnet18": resnet18}


def build_model(name: str, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Build the model ``name`` for images of shape ``input_shape = (C, H, W)``.

    Examples
    --------
    >>> model = build_model("lenet5", (1, 8, 8), 10)
    >>> sum(p.numel() for p in model.parameters()) > 0
    True
    """
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"model={name!r} is not one of {sorted(MODELS)}")
    channels, height, width = _image_shape(input_shape)
    return MODELS[name](channels, (height, width), num_classes)


def _image_shape(input_shape):
    """``input_shape`` as ``(C, H, W)``: three positive integers (not rounded)."""
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise TypeError(f"input_shape={input_shape!r} must be (C, H, W), three positive ints")
    if len(input_shape) != 3:
        raise ValueError(f"input_shape={tuple(input_shape)} must be (C, H, W)")
    return tuple(check_integer(v, f"input_shape[{i}]", 1) for i, v in enumerate(input_shape))


def layer_parameter_counts(model: nn.Module) -> dict[str, tuple[str, int]]:
    """Parameters (weight and bias) of each ``Conv*d``/``Linear`` module: ``{name: (kind, n)}``.

    ``kind`` is ``"conv"`` or ``"linear"``.
    """
    counts: dict[str, tuple[str, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            counts[name] = ("conv", sum(p.numel() for p in module.parameters()))
        elif isinstance(module, nn.Linear):
            counts[name] = ("linear", sum(p.numel() for p in module.parameters()))
    return counts
