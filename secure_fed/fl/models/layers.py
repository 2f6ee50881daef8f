"""Opacus-friendly building blocks: convolutions with GroupNorm, no in-place ops.

BatchNorm mixes samples within a batch, so per-sample gradients (Opacus, DP-SGD) are
undefined through it; GroupNorm normalizes each sample on its own. Activations are built
with ``inplace=False`` and residuals are added out of place, so Opacus' forward/backward
hooks always see the tensors they captured.
"""

from __future__ import annotations

from torch import Tensor, nn

GROUPS = 8


def group_norm(channels: int, groups: int = GROUPS) -> nn.GroupNorm:
    """GroupNorm with ``min(groups, channels)`` groups (``channels`` must divide evenly)."""
    g = min(groups, channels)
    if channels % g != 0:
        raise ValueError(f"GroupNorm: {channels} channels do not split into {g} groups")
    return nn.GroupNorm(g, channels)


def conv_gn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (no bias: GroupNorm has one) -> GroupNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
        group_norm(out_ch),
        nn.ReLU(inplace=False),
    )


class BasicBlockGN(nn.Module):
    """ResNet basic block (two 3x3 convs) with GroupNorm and an out-of-place residual add."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.norm2 = group_norm(out_ch)
        self.relu1 = nn.ReLU(inplace=False)
        self.relu2 = nn.ReLU(inplace=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), group_norm(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))
