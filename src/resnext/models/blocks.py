"""The ResNeXt bottleneck block in the three equivalent forms of the paper's Fig. 3.

All three compute ``relu(bn3(expand(aggregate(paths(x)))) + shortcut(x))`` with C
paths of width d; they differ only in how the paths are laid out in memory:

* ``"a"``: C separate paths (1x1, BN, ReLU, 3x3, BN, ReLU, 1x1), outputs summed, then BN.
* ``"b"``: C paths up to the 3x3, outputs concatenated, one 1x1 expand, BN.
* ``"c"``: one 1x1 to C*d channels, one grouped 3x3 with C groups, one 1x1 expand
  (what everybody runs, and torchvision's parameter layout).

Batch norm is per channel, so the C*d-channel BNs of form (c) split exactly into C
BNs of d channels; the final BN acts on the aggregated sum in every form. That makes
the weights of one form map exactly onto another (see :mod:`resnext.models.block_forms`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

BLOCK_FORMS = ("a", "b", "c")


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_ch, out_ch, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False
    )


class _BlockBase(nn.Module):
    """Shared shortcut and bookkeeping of the three block forms."""

    form: str

    def __init__(
        self, in_ch: int, out_ch: int, cardinality: int, path_width: int, stride: int
    ) -> None:
        super().__init__()
        self.in_ch = in_ch
        self.out_ch = out_ch
        self.cardinality = cardinality
        self.path_width = path_width
        self.stride = stride
        self.relu = nn.ReLU(inplace=True)

    def _add_shortcut(self) -> None:
        """Projection shortcut ("option B") wherever the shape changes.

        Registered after the residual branch so the state dict keys come in
        torchvision's order (conv1 .. bn3, downsample).
        """
        self.downsample: nn.Sequential | None = None
        if self.stride != 1 or self.in_ch != self.out_ch:
            self.downsample = nn.Sequential(
                conv1x1(self.in_ch, self.out_ch, self.stride), nn.BatchNorm2d(self.out_ch)
            )

    def last_bn(self) -> nn.BatchNorm2d:
        """The BN whose output joins the shortcut (zero-initialised on request)."""
        return self.bn3  # type: ignore[return-value]

    def _residual(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self._residual(x)
        # add_, not +=: torch.fx (BN folding for inference) traces += as an out-of-place
        # add, which allocates a fresh feature map (25-50 MB at resnext50's first stage)
        out = out.add_(identity)
        return self.relu(out)


class GroupedBottleneck(_BlockBase):
    """Form (c): 1x1, BN, ReLU, 3x3 group (C groups), BN, ReLU, 1x1, BN, add, ReLU.

    The stride sits on the 3x3 conv (not the 1x1), as in the paper and torchvision.
    """

    form = "c"

    def __init__(
        self, in_ch: int, out_ch: int, cardinality: int, path_width: int, stride: int = 1
    ) -> None:
        super().__init__(in_ch, out_ch, cardinality, path_width, stride)
        width = cardinality * path_width
        self.conv1 = conv1x1(in_ch, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups=cardinality)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self._add_shortcut()

    def _residual(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class _Path(nn.Module):
    """One of the C paths: 1x1 (in -> d), BN, ReLU, 3x3 (d -> d), BN, ReLU [, 1x1 (d -> out)]."""

    def __init__(self, in_ch: int, width: int, stride: int, out_ch: int | None) -> None:
        super().__init__()
        self.conv1 = conv1x1(in_ch, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_ch) if out_ch is not None else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return out if self.conv3 is None else self.conv3(out)


class SplitSumBottleneck(_BlockBase):
    """Form (a): C paths of 1x1, BN, ReLU, 3x3, BN, ReLU, 1x1; summed; BN, add, ReLU."""

    form = "a"

    def __init__(
        self, in_ch: int, out_ch: int, cardinality: int, path_width: int, stride: int = 1
    ) -> None:
        super().__init__(in_ch, out_ch, cardinality, path_width, stride)
        self.paths = nn.ModuleList(
            _Path(in_ch, path_width, stride, out_ch) for _ in range(cardinality)
        )
        self.bn3 = nn.BatchNorm2d(out_ch)
        self._add_shortcut()

    def _residual(self, x: Tensor) -> Tensor:
        out = self.paths[0](x)
        for path in self.paths[1:]:
            out = out + path(x)
        return self.bn3(out)


class SplitConcatBottleneck(_BlockBase):
    """Form (b): C paths of 1x1, BN, ReLU, 3x3, BN, ReLU; concatenated; 1x1, BN, add, ReLU."""

    form = "b"

    def __init__(
        self, in_ch: int, out_ch: int, cardinality: int, path_width: int, stride: int = 1
    ) -> None:
        super().__init__(in_ch, out_ch, cardinality, path_width, stride)
        self.paths = nn.ModuleList(
            _Path(in_ch, path_width, stride, None) for _ in range(cardinality)
        )
        self.conv3 = conv1x1(cardinality * path_width, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self._add_shortcut()

    def _residual(self, x: Tensor) -> Tensor:
        out = torch.cat([path(x) for path in self.paths], dim=1)
        return self.bn3(self.conv3(out))


BLOCKS: dict[str, type[_BlockBase]] = {
    "a": SplitSumBottleneck,
    "b": SplitConcatBottleneck,
    "c": GroupedBottleneck,
}


def make_block(
    form: str, in_ch: int, out_ch: int, cardinality: int, path_width: int, stride: int
) -> _BlockBase:
    """Build one bottleneck block of the given form ("a", "b" or "c")."""
    if form not in BLOCKS:
        raise ValueError(
            f"block_form must be one of {', '.join(BLOCK_FORMS)} (paper Fig. 3), got {form!r}"
        )
    return BLOCKS[form](in_ch, out_ch, cardinality, path_width, stride)
