"""The metric loop (inference.metrics): 10-crop and ensemble scores against hand-computed
softmax averages."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from resnext.data import Preprocess
from resnext.errors import ConfigError
from resnext.inference.metrics import crop_log_probs, ensemble_log_probs, run_metrics


class FixedLogits(nn.Module):
    """Returns row ``x[i]`` of a fixed logit table for an input holding the index ``i``."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.register_buffer("table", torch.tensor(table))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x.flatten(1)[:, 0].long()]


def index_batch(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)


def test_ten_crop_transform_is_corners_centre_and_their_mirrors() -> None:
    img = torch.randint(0, 256, (3, 6, 6), dtype=torch.uint8)
    pre = Preprocess(image_size=4, eval_resize=6, mean=(0.0,) * 3, std=(1.0,) * 3)
    crops = pre.transform(ten_crop=True)(img)
    assert crops.shape == (10, 3, 4, 4)

    def five(x: torch.Tensor) -> list[torch.Tensor]:
        tl, tr = x[:, :4, :4], x[:, :4, 2:]
        bl, br = x[:, 2:, :4], x[:, 2:, 2:]
        return [tl, tr, bl, br, x[:, 1:5, 1:5]]

    hand = five(img) + five(img.flip(-1))
    for got, want in zip(crops, hand, strict=True):
        torch.testing.assert_close(got, want.float() / 255, rtol=0, atol=1e-7)
    # The centre crop is exactly what the single-crop test feeds the model.
    assert torch.equal(crops[4], pre.transform()(img))


@pytest.mark.parametrize(("resize", "shape"), [(None, (3, 9, 6)), (7, (3, 6, 9)), (8, (3, 8, 8))])
def test_ten_crop_centre_is_the_single_crop(resize: int | None, shape: tuple) -> None:
    img = torch.randint(0, 256, shape, dtype=torch.uint8)
    pre = Preprocess(image_size=5, eval_resize=resize, mean=(0.4,) * 3, std=(0.2,) * 3)
    crops = pre.transform(ten_crop=True)(img)
    torch.testing.assert_close(crops[4], pre.transform()(img), rtol=0, atol=0)


def test_ten_crop_scores_are_the_average_of_the_crops_softmax() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    pre = Preprocess(image_size=4, eval_resize=6, mean=(0.5,) * 3, std=(0.25,) * 3)
    tf = pre.transform(ten_crop=True)
    images = [torch.randint(0, 256, (3, 6, 6), dtype=torch.uint8) for _ in range(4)]
    x = torch.stack([tf(im) for im in images])  # (4, 10, 3, 4, 4)
    labels = torch.tensor([0, 1, 2, 1])
    report = run_metrics([model], [(x, labels)], 3, progress=False, keep_probs=True)

    with torch.no_grad():
        hand = torch.stack([model(crops).softmax(1).mean(0) for crops in x])
    r = report.members[0]
    torch.testing.assert_close(r.probs, hand, rtol=0, atol=1e-6)
    want_top1 = 100.0 * float((hand.argmax(1) == labels).float().mean())
    assert r.top1 == pytest.approx(want_top1)
    want_loss = float(-hand[torch.arange(4), labels].log().mean())
    assert r.loss == pytest.approx(want_loss, rel=1e-5)
    assert report.ensemble is None and r.num_images == 4


def test_ensemble_averages_softmax_not_logits() -> None:
    # Sample 0: A is sure of class 0, B and C mildly prefer class 1. The mean softmax picks
    # class 1 (0.497 vs 0.503); the mean of the logits would pick class 0 (1.0 vs 0.67).
    a = FixedLogits([[3.0, 0.0], [0.0, 2.0]])
    b = FixedLogits([[0.0, 1.0], [0.0, 2.0]])
    c = FixedLogits([[0.0, 1.0], [5.0, 0.0]])
    labels = torch.tensor([1, 1])
    report = run_metrics(
        [a, b, c], [(index_batch(2), labels)], 2, names=["a", "b", "c"], progress=False,
        keep_probs=True,
    )  # fmt: skip
    p = [t.table.softmax(1) for t in (a, b, c)]
    hand = (p[0] + p[1] + p[2]) / 3
    assert float(hand[0, 1]) == pytest.approx(0.5032, abs=1e-4)  # softmax average: class 1
    torch.testing.assert_close(report.ensemble.probs, hand, rtol=0, atol=1e-6)
    assert report.ensemble.top1 == 100.0  # both samples right
    assert [m.top1 for m in report.members] == [50.0, 100.0, 50.0]
    want_loss = float(-hand[[0, 1], [1, 1]].log().mean())
    assert report.ensemble.loss == pytest.approx(want_loss, rel=1e-6)
    assert report.final is report.ensemble


def test_members_with_their_own_inputs() -> None:
    # A list of inputs gives each member its own tensor (different preprocessing).
    a = FixedLogits([[1.0, 0.0], [0.0, 1.0]])
    x0, x1 = index_batch(2), index_batch(2).flip(0)
    report = run_metrics([a, a], [([x0, x1], torch.tensor([0, 1]))], 2, progress=False)
    assert [m.top1 for m in report.members] == [100.0, 0.0]


def test_per_class_accuracy_confusion_and_topk() -> None:
    # Predictions 0, 0, 2, 2 for labels 0, 1, 2, 2; class 3 has no images.
    m = FixedLogits([[5, 1, 0, 0], [5, 4, 0, 0], [0, 0, 5, 0], [0, 0, 5, 1]])
    labels = torch.tensor([0, 1, 2, 2])
    r = run_metrics([m], [(index_batch(4), labels)], 4, progress=False).members[0]
    assert r.top1 == 75.0 and r.top1_error == 25.0
    assert r.topk == 4 and r.top5 == 100.0  # fewer than 5 classes: top-k over all of them
    assert r.per_class[:3] == [100.0, 0.0, 100.0] and math.isnan(r.per_class[3])
    assert r.class_counts == [1, 1, 2, 0]
    assert r.confusion.tolist() == [[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0]]
    d = r.to_dict(["a", "b", "c", "d"])
    assert d["per_class"]["b"] == {"accuracy": 0.0, "images": 1}
    assert d["per_class"]["d"]["accuracy"] is None


def test_top5_counts_the_fifth_best_class() -> None:
    m = FixedLogits([[6, 5, 4, 3, 2, 1, 0], [6, 5, 4, 3, 2, 1, 0]])
    r = run_metrics([m], [(index_batch(2), torch.tensor([4, 5]))], 7, progress=False).members[0]
    assert (r.top1, r.top5, r.topk) == (0.0, 50.0, 5)


def test_batches_accumulate_like_one_batch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    x, y = torch.randn(10, 3, 2, 2), torch.randint(0, 5, (10,))
    one = run_metrics([model], [(x, y)], 5, progress=False).members[0]
    split = run_metrics([model], [(x[:3], y[:3]), (x[3:], y[3:])], 5, progress=False).members[0]
    assert (one.top1, one.top5) == (split.top1, split.top5)
    assert one.loss == pytest.approx(split.loss, rel=1e-6)
    assert torch.equal(one.confusion, split.confusion)


def test_log_space_average_equals_plain_average() -> None:
    logits = torch.randn(6, 4) * 30  # large logits: plain softmax would underflow
    got = crop_log_probs(logits, 3).exp()
    want = logits.softmax(1).view(2, 3, 4).mean(1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    lp = [torch.randn(2, 4).log_softmax(1) for _ in range(3)]
    torch.testing.assert_close(
        ensemble_log_probs(lp).exp(), torch.stack([t.exp() for t in lp]).mean(0)
    )


def test_bf16_is_close_to_fp32() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    x, y = torch.randn(16, 3, 6, 6), torch.randint(0, 5, (16,))
    fp32 = run_metrics([model], [(x, y)], 5, progress=False, keep_probs=True).members[0]
    bf16 = run_metrics([model], [(x, y)], 5, progress=False, keep_probs=True, precision="bf16")
    assert bf16.members[0].probs.dtype == torch.float32
    torch.testing.assert_close(bf16.members[0].probs, fp32.probs, rtol=0, atol=3e-2)
    # The forward really ran in bf16: the conv's output dtype, and probabilities that are
    # not bitwise fp32's (they would be if the precision were ignored).
    seen: list[torch.dtype] = []
    hook = model[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    try:
        again = run_metrics([model], [(x, y)], 5, progress=False, keep_probs=True, precision="bf16")
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert not torch.equal(again.members[0].probs, fp32.probs)
    assert not torch.equal(bf16.members[0].probs, fp32.probs)


def test_user_errors_are_clear() -> None:
    m = FixedLogits([[1.0, 0.0]])
    with pytest.raises(ValueError, match="outside the model's 2 classes"):
        run_metrics([m], [(index_batch(1), torch.tensor([2]))], 2, progress=False)
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        run_metrics([m], [], 2, precision="fp8")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        run_metrics([m], [], 2, precision="fp16")
    with pytest.raises(ValueError, match="empty"):
        run_metrics([m], [], 2, progress=False)
