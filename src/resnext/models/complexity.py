"""Parameters, multiply-adds and activations, measured on the real module graph.

A forward pass with hooks on every leaf module counts what each conv and linear
layer does with the shapes it really sees, so the numbers follow the model as built,
not a second hand-written formula. Conventions are the paper's and pycls's:

* FLOPs are multiply-adds of the convs and fully connected layers (paper Table 1:
  ResNeXt-50 32x4d has 4.2 G at 224x224); BN, ReLU, pooling and the residual add
  are not counted.
* Activations are the output elements of every conv and linear layer (pycls's "acts").
* Parameters are counted per stage: stem (conv1, bn1), layer1.., head (fc).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class StageCost:
    name: str
    params: int = 0
    flops: int = 0
    activations: int = 0
    output_shape: tuple[int, ...] = ()


@dataclass
class Complexity:
    """Totals and per-stage breakdown for one input size (batch 1)."""

    input_size: int
    stages: list[StageCost] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(s.params for s in self.stages)

    @property
    def flops(self) -> int:
        return sum(s.flops for s in self.stages)

    @property
    def activations(self) -> int:
        return sum(s.activations for s in self.stages)

    def rows(self) -> list[tuple[str, ...]]:
        """A header, one row a stage and a total row, as strings (the command prints them)."""
        rows = [("stage", "output", "params", "FLOPs (MACs)", "activations")]
        for s in self.stages:
            rows.append(
                (
                    s.name,
                    "x".join(map(str, s.output_shape[1:])),
                    f"{s.params:,}",
                    f"{s.flops / 1e9:.3f} G",
                    f"{s.activations / 1e6:.3f} M",
                )
            )
        rows.append(
            (
                "total",
                "",
                f"{self.params:,}",
                f"{self.flops / 1e9:.3f} G",
                f"{self.activations / 1e6:.3f} M",
            )
        )
        return rows


def _stage_of(qualified_name: str, stage_names: list[str]) -> str:
    top = qualified_name.split(".", 1)[0]
    if top in stage_names:
        return top
    return "head" if top in ("fc", "avgpool") else "stem"


def measure(model: nn.Module, input_size: int = 224, in_chans: int | None = None) -> Complexity:
    """Count parameters, multiply-adds and activations of ``model`` on one image.

    Args:
        model: a :class:`~resnext.models.ResNeXt` (any module with ``stage_names`` works).
        input_size: side of the square input image.
        in_chans: input channels; defaults to the model's ``arch.in_chans`` or 3.
    """
    if input_size < 1:
        raise ValueError(f"input_size must be a positive integer, got {input_size}")
    stage_names: list[str] = list(getattr(model, "stage_names", []))
    if in_chans is None:
        arch = getattr(model, "arch", None)
        in_chans = arch.in_chans if arch is not None else 3
    order = ["stem", *stage_names, "head"]
    costs = {name: StageCost(name) for name in order}
    for pname, p in model.named_parameters():
        costs[_stage_of(pname, stage_names)].params += p.numel()

    hooks = []

    def hook(name: str):
        def fn(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            cost = costs[_stage_of(name, stage_names)]
            if isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                cost.flops += output.numel() * (module.in_channels // module.groups) * k
                cost.activations += output.numel()
            elif isinstance(module, nn.Linear):
                cost.flops += output.numel() * module.in_features
                cost.activations += output.numel()

        return fn

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook(name)))
    for name in ["maxpool", *stage_names]:

        def shape_hook(module, inputs, output, _name=name):
            costs[_stage_of(_name, stage_names)].output_shape = tuple(output.shape)

        if hasattr(model, name):
            hooks.append(getattr(model, name).register_forward_hook(shape_hook))

    was_training = model.training
    param = next(model.parameters())
    x = torch.zeros(1, in_chans, input_size, input_size, device=param.device, dtype=param.dtype)
    try:
        model.eval()
        with torch.no_grad():
            out = model(x)
        costs["head"].output_shape = tuple(out.shape)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return Complexity(input_size=input_size, stages=[costs[n] for n in order])
