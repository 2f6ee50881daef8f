"""SmallCNN: the digits / MNIST model (1 x 8 x 8 and 1 x 28 x 28 inputs), client and server.

Two conv-GroupNorm-ReLU blocks, a pooled 4 x 4 map, then a linear projection to the
``feature_dim`` feature vector that FedHPro's prototypes live in. Small on purpose: one
digits round of 10 clients x 1 local epoch must run in well under a second on a CPU.
"""

from __future__ import annotations

from torch import Tensor, nn

from secure_fed.fl.models.layers import conv_gn_relu

POOLED_HW = 4


class SmallCNN(nn.Module):
    """CNN with ``features(x) -> B x feature_dim`` and ``classifier: Linear(feature_dim, C)``.

    Input ``in_channels x H x W`` with H, W >= 4 (8 x 8 digits, 28 x 28 MNIST). Inputs of
    16 pixels or more are max-pooled after each block (28 -> 14 -> 7), smaller ones only
    after the second (8 -> 4); an adaptive average pool then fixes the map at 4 x 4.
    """

    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, int, int] = (1, 8, 8),
        feature_dim: int = 64,
        width: int = 16,
    ) -> None:
        super().__init__()
        in_ch, height, width_px = input_shape
        if min(height, width_px) < POOLED_HW or num_classes < 2 or feature_dim < 1:
            raise ValueError(
                f"SmallCNN needs H, W >= {POOLED_HW}, num_classes >= 2, feature_dim >= 1; "
                f"got input {input_shape}, {num_classes} classes, feature_dim {feature_dim}"
            )
        pool_early = min(height, width_px) >= 16
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.body = nn.Sequential(
            conv_gn_relu(in_ch, width),
            nn.MaxPool2d(2) if pool_early else nn.Identity(),
            conv_gn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(POOLED_HW),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(2 * width * POOLED_HW * POOLED_HW, feature_dim),
            nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Feature vectors, B x feature_dim (non-negative: taken after a ReLU)."""
        return self.head(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits, B x num_classes."""
        return self.classifier(self.features(x))
