"""The ResNeXt network: a stem, stages of bottleneck blocks, and a classifier head.

One class covers the ImageNet family (7x7/2 stem + max-pool, four stages) and the
CIFAR family (3x3 stem with 64 filters, three stages; ResNeXt-29), for any
cardinality C and bottleneck width d; ResNet is C=1, d=64. Parameter names follow
torchvision (``conv1``, ``bn1``, ``layer1``..``layer4``, ``fc``, ``downsample``) so
torchvision's checkpoints load strictly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn

from .blocks import BLOCK_FORMS, _BlockBase, make_block

#: Blocks per stage for each depth of the ImageNet family (3 layers per block + stem + fc).
IMAGENET_DEPTHS: dict[int, tuple[int, ...]] = {
    26: (2, 2, 2, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
#: Blocks per stage for the CIFAR family (paper Sec. 5.3: 3 stages of 3 blocks).
CIFAR_DEPTHS: dict[int, tuple[int, ...]] = {29: (3, 3, 3)}

IMAGENET_WIDTHS = (256, 512, 1024, 2048)  # block output widths (paper Table 1)
CIFAR_WIDTHS = (256, 512, 1024)  # paper Sec. 5.3


@dataclass(frozen=True)
class Architecture:
    """Everything that fixes a network's shape; stored with the model and in checkpoints."""

    depth: int
    cardinality: int
    bottleneck_width: int
    family: str = "imagenet"  # "imagenet" (224x224) or "cifar" (32x32)
    num_classes: int = 1000
    in_chans: int = 3
    block_form: str = "c"
    stem_width: int = 64
    widths: tuple[int, ...] | None = None  # block output widths; None = the paper's

    @property
    def name(self) -> str:
        """The registry name of this shape: ``resnext50_32x4d``, or ``resnet50`` for C=1,
        d=64 (stem and stage widths other than the paper's are not part of the name)."""
        if self.cardinality == 1 and self.bottleneck_width == 64:
            return f"resnet{self.depth}"
        return f"resnext{self.depth}_{self.cardinality}x{self.bottleneck_width}d"

    def stage_blocks(self) -> tuple[int, ...]:
        table = IMAGENET_DEPTHS if self.family == "imagenet" else CIFAR_DEPTHS
        return table[self.depth]

    def stage_widths(self) -> tuple[int, ...]:
        if self.widths is not None:
            return tuple(self.widths)
        return IMAGENET_WIDTHS if self.family == "imagenet" else CIFAR_WIDTHS

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = None if self.widths is None else list(self.widths)
        return d


def _check(arch: Architecture) -> None:
    """Raise ValueError naming the impossible argument and why."""
    if arch.family not in ("imagenet", "cifar"):
        raise ValueError(f"family must be 'imagenet' or 'cifar', got {arch.family!r}")
    table = IMAGENET_DEPTHS if arch.family == "imagenet" else CIFAR_DEPTHS
    if arch.depth not in table:
        raise ValueError(
            f"depth={arch.depth} has no block table for the {arch.family} family; "
            f"valid depths: {', '.join(map(str, sorted(table)))}"
        )
    for name in ("cardinality", "bottleneck_width", "num_classes", "in_chans", "stem_width"):
        value = getattr(arch, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if arch.block_form not in BLOCK_FORMS:
        raise ValueError(
            f"block_form must be one of {', '.join(BLOCK_FORMS)} (paper Fig. 3), "
            f"got {arch.block_form!r}"
        )
    n_stages = len(table[arch.depth])
    if arch.widths is not None and (
        len(arch.widths) != n_stages or any(int(w) < 1 for w in arch.widths)
    ):
        raise ValueError(
            f"widths must list {n_stages} positive block output widths, got {arch.widths!r}"
        )


class ResNeXt(nn.Module):
    """ResNeXt / ResNet classifier.

    Args:
        depth: 26, 50, 101, 152 or 200 (ImageNet family) or 29 (CIFAR family).
        cardinality: C, the number of paths (groups of the 3x3 conv); 1 gives ResNet.
        bottleneck_width: d, the width of one path in the first stage; doubles per stage.
        family: "imagenet" (7x7/2 stem and max-pool, 4 stages) or "cifar" (3x3 stem, 3 stages).
        num_classes: outputs of the final fully connected layer.
        in_chans: input image channels.
        block_form: "a", "b" or "c" (paper Fig. 3); all compute the same function.
        zero_init_last_bn: start each block's last BN at gamma=0, so every block begins
            as the identity (Goyal et al. 2017); off in the paper and torchvision.
        stem_width: channels of the stem conv (64 in the paper).
        widths: block output widths per stage; None uses the paper's (256, 512, ...).
    """

    def __init__(
        self,
        depth: int = 50,
        cardinality: int = 32,
        bottleneck_width: int = 4,
        family: str = "imagenet",
        num_classes: int = 1000,
        in_chans: int = 3,
        block_form: str = "c",
        zero_init_last_bn: bool = False,
        stem_width: int = 64,
        widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        arch = Architecture(
            depth=depth,
            cardinality=cardinality,
            bottleneck_width=bottleneck_width,
            family=family,
            num_classes=num_classes,
            in_chans=in_chans,
            block_form=block_form,
            stem_width=stem_width,
            widths=None if widths is None else tuple(int(w) for w in widths),
        )
        _check(arch)
        self.arch = arch

        if family == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_chans, stem_width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)

        in_ch = stem_width
        self.stage_names: list[str] = []
        for i, (n_blocks, out_ch) in enumerate(
            zip(arch.stage_blocks(), arch.stage_widths(), strict=True)
        ):
            # Path width d doubles with each stage; the first stage is not strided
            # (ImageNet: the max-pool already halved it; CIFAR: it runs at 32x32).
            path_width = bottleneck_width * 2**i
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n_blocks):
                blocks.append(
                    make_block(
                        block_form, in_ch, out_ch, cardinality, path_width, stride if j == 0 else 1
                    )
                )
                in_ch = out_ch
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)

        self.num_features = in_ch
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        self._init_weights(zero_init_last_bn)

    def _init_weights(self, zero_init_last_bn: bool) -> None:
        # He et al. 2015 ("MSRA") init with fan-out, as in the paper (Sec. 4) and
        # fb.resnet.torch; BN starts as the identity. The fc keeps PyTorch's default
        # init, as torchvision does, so both give the same starting distribution.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m.weight.is_meta:
                    # built to be loaded (checkpoint.built_to_load): nothing to draw, and on the
                    # meta device normal_ would import torch._dynamo (~0.9 s) for nothing
                    continue
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last_bn:
            for m in self.modules():
                if isinstance(m, _BlockBase):
                    nn.init.zeros_(m.last_bn().weight)

    # -- the uniform surface ---------------------------------------------------------
    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, name) for name in self.stage_names]

    def forward_stages(self, x: Tensor) -> dict[str, Tensor]:
        """Every stage's output feature map, keyed by stage name (for detection backbones)."""
        x = self.stem(x)
        out: dict[str, Tensor] = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            out[name] = x
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's feature map, before pooling."""
        x = self.stem(x)
        for stage in self.stages():
            x = stage(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool and classifier; ``pre_logits`` returns the pooled features."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (fine-tuning)."""
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.fc = nn.Linear(self.num_features, num_classes).to(
            device=self.fc.weight.device, dtype=self.fc.weight.dtype
        )
        self.arch = replace(self.arch, num_classes=num_classes)
