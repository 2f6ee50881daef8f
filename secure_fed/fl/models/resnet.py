"""ResNet10GN: a ResNet-10-style network with GroupNorm for 3 x 32 x 32 CIFAR inputs.

Stem conv + four stages of one basic block each (1 + 4 x 2 convolutions + the classifier
= 10 weighted layers), widths ``w, 2w, 4w, 8w`` (w = 32 by default, so the pooled output
is 256 wide and is the feature vector directly). GroupNorm everywhere so Opacus can compute
per-sample gradients. Runs on clients (training) and on the server (evaluation).
"""

from __future__ import annotations

from torch import Tensor, nn

from secure_fed.fl.models.layers import BasicBlockGN, conv_gn_relu


class ResNet10GN(nn.Module):
    """ResNet-10 with ``features(x) -> B x feature_dim`` and ``classifier``.

    When ``feature_dim`` differs from the last stage width (8 x ``base_width``), a
    Linear + ReLU projection maps the pooled vector to ``feature_dim``.
    """

    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, int, int] = (3, 32, 32),
        feature_dim: int = 256,
        base_width: int = 32,
    ) -> None:
        super().__init__()
        if num_classes < 2 or feature_dim < 1 or base_width < 8 or base_width % 8:
            raise ValueError(
                "ResNet10GN needs num_classes >= 2, feature_dim >= 1 and base_width a "
                f"multiple of 8; got {num_classes}, {feature_dim}, {base_width}"
            )
        widths = [base_width * m for m in (1, 2, 4, 8)]
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.stem = conv_gn_relu(input_shape[0], widths[0])
        self.stages = nn.Sequential(
            BasicBlockGN(widths[0], widths[0], stride=1),
            BasicBlockGN(widths[0], widths[1], stride=2),
            BasicBlockGN(widths[1], widths[2], stride=2),
            BasicBlockGN(widths[2], widths[3], stride=2),
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head: nn.Module = nn.Identity()
        if feature_dim != widths[3]:
            self.head = nn.Sequential(nn.Linear(widths[3], feature_dim), nn.ReLU(inplace=False))
        self.classifier = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Feature vectors, B x feature_dim (non-negative)."""
        return self.head(self.pool(self.stages(self.stem(x))))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits, B x num_classes."""
        return self.classifier(self.features(x))
