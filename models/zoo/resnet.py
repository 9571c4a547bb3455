"""A CIFAR-style ResNet-18 for the digits task: the real-size built-in zoo.

The network takes the flat ``(N, 64)`` digits features like the other digits architectures
(so ``digits.accuracy`` and ``rpg evaluate`` serve it unchanged), upsamples the 8x8 image to
``image_side`` x ``image_side`` (bilinear) and runs the CIFAR variant of ResNet-18 (He et al.
2016): a 3x3 stem without max-pool, four stages of two basic blocks with ``width``, 2x, 4x and
8x ``width`` channels, global average pooling and a linear head. With the defaults (width 64,
one input channel, 10 classes) it has 11,172,810 parameters and 9,600 BatchNorm buffer values;
``width=20`` gives a 1.09M-parameter variant with the same tensor layout for quick tests.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from models.zoo.digits import IMAGE_SIDE

__all__ = ["resnet18"]


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a (projected when the shape changes) shortcut, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class DigitsResNet18(nn.Module):
    """ResNet-18 (CIFAR stem) on digits upsampled from 8x8 to ``image_side`` squared."""

    def __init__(self, width: int, num_classes: int, image_side: int) -> None:
        super().__init__()
        self.image_side = image_side
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages: list[nn.Module] = []
        in_ch = width
        for i, mult in enumerate((1, 2, 4, 8)):
            out_ch = width * mult
            stride = 1 if i == 0 else 2
            stages.append(
                nn.Sequential(BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1))
            )
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)  # (N, 64) -> (N, 1, 8, 8)
        if self.image_side != IMAGE_SIDE:
            # (N, 1, 8, 8) -> (N, 1, s, s)
            x = F.interpolate(
                x, size=(self.image_side, self.image_side), mode="bilinear", align_corners=False
            )
        x = F.relu(self.bn1(self.conv1(x)))  # (N, w, s, s)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 8w, s/8, s/8)
        x = x.mean(dim=(2, 3))  # (N, 8w)
        return self.fc(x)  # (N, classes)


def resnet18(width: int = 64, num_classes: int = 10, image_side: int = 32) -> nn.Module:
    """CIFAR-style ResNet-18 taking flat (N, 64) digits; 11,172,810 parameters by default."""
    if width < 1 or num_classes < 1:
        raise ValueError(f"width and num_classes must be >= 1, got {width}, {num_classes}")
    if image_side < IMAGE_SIDE or image_side % 8:
        raise ValueError(
            f"image_side must be a multiple of 8 and >= {IMAGE_SIDE} (three stride-2 stages), "
            f"got {image_side}"
        )
    return DigitsResNet18(width, num_classes, image_side)
