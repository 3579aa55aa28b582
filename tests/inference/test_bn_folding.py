"""BatchNorm folding: the folded copy computes what the model computes, for every block form
(each BN that follows a convolution folded), and leaves the model itself alone; a model
torch.fx cannot trace is run unfolded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import TINY
from resnext.benchmarking import randomise_bn
from resnext.inference.optimize import EagerRunner, fold_batchnorm
from resnext.models import create_model


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("form", ["a", "b", "c"])
def test_folded_model_equals_the_model_for_each_block_form(form: str) -> None:
    torch.manual_seed(0)
    model = create_model("resnext29_2x4d", num_classes=10, block_form=form, **TINY)
    randomise_bn(model)
    model.train()  # folding must not depend on (or change) the caller's mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    # form (a) keeps the BN after each block's sum of paths: it follows an add, not a conv
    left = 9 if form == "a" else 0  # ResNeXt-29: 9 blocks
    assert _batchnorms(model) > 0 and _batchnorms(folded) == left
    assert folded.arch == model.arch
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        expected = model.eval()(x)
        # The folding itself is exact: in float64 the folded copy agrees to rounding.
        exact = fold_batchnorm(model.double())(x.double())
        torch.testing.assert_close(exact, model(x.double()), rtol=1e-12, atol=1e-12)
        model.float()
        # In float32 the folded convolutions round differently; on an AVX2-only CPU (Zen 3)
        # form (b) reached 6e-5 at an output of 1.5 (4e-5 relative), so the bound is 1e-4.
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-4)
        runner = EagerRunner(model, torch.device("cpu"))
        # channels_last kernels sum in another order: a few 1e-5 relative
        torch.testing.assert_close(runner(x), expected, rtol=1e-4, atol=1e-4)
    for k, v in model.state_dict().items():  # the model itself is untouched
        assert torch.equal(v, before[k]), k


def test_an_untraceable_model_runs_unfolded_with_a_warning() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # control flow on a value: torch.fx cannot trace it
                x = -x
            return self.bn(self.conv(x))

    model = DataDependent().eval()
    with pytest.warns(UserWarning, match="BatchNorm folding skipped.*DataDependent"):
        folded = fold_batchnorm(model)
    assert _batchnorms(folded) == 1
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x))


@pytest.mark.parametrize("form", ["a", "b", "c"])
def test_folded_blocks_add_the_shortcut_in_place(form: str) -> None:
    """torch.fx traces ``out += x`` as an out-of-place add; the blocks write ``add_`` so the
    folded model adds into the existing feature map instead of allocating a new one (on a
    2-core Zen 5 a fresh 16x256x56x56 output took 2-15 ms against 1 ms in place)."""
    import operator

    model = create_model("resnext29_2x4d", num_classes=10, block_form=form, **TINY)
    folded = fold_batchnorm(model)
    calls = [n for n in folded.graph.nodes if n.op in ("call_function", "call_method")]
    blocks = sum(len(stage) for stage in model.stages())
    assert sum(n.target == "add_" for n in calls) == blocks  # one shortcut add per block
    if form != "a":  # form a also sums its paths (adds of small path outputs)
        assert not [n for n in calls if n.target in (operator.add, torch.add, "add")]
