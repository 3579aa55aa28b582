"""The engine's parts against hand computations: EMA, schedules, optimizer groups, RNG,
gradient accumulation, clipping, NaN handling, evaluation."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from resnext.checkpoint import load_checkpoint
from resnext.config import ConfigError, load_config
from resnext.data import LoaderOrder, TensorImages, TransformedDataset, make_loader
from resnext.engine import (
    ModelEma,
    NonFiniteLossError,
    RunSetup,
    Trainer,
    build_optimizer,
    build_scheduler,
    get_rng_state,
    lr_factor_fn,
    scaled_lr,
    set_rng_state,
)
from resnext.engine.setup import resolve_train_config
from resnext.errors import DataError
from resnext.inference.metrics import run_metrics


# -- EMA --------------------------------------------------------------------------------
def _tiny_bn_model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_ema_matches_hand_computation() -> None:
    """w_ema = d * w_ema + (1 - d) * w, step after step (values exact in binary: bitwise)."""
    model = _tiny_bn_model()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5, -1.0, 2.0], [0.0, 4.0, -0.25]]))
    w0 = model[0].weight.detach().clone()
    ema = ModelEma(model, decay=0.75)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_mean.fill_(2.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    expected = 0.75 * w0 + 0.25 * 1.0  # e.g. 0.75 * 0.5 + 0.25 = 0.625
    assert torch.equal(ema.module[0].weight, expected)
    assert ema.module[0].weight[0, 0].item() == 0.625
    # BN running statistics are averaged the same way; the integer counter is copied.
    assert torch.equal(ema.module[1].running_mean, torch.full((2,), 0.25 * 2.0))
    assert int(ema.module[1].num_batches_tracked) == 7
    with torch.no_grad():
        model[0].weight.fill_(-3.0)
    ema.update(model)
    expected = 0.75 * expected + 0.25 * -3.0
    assert torch.equal(ema.module[0].weight, expected)
    assert ema.module[0].weight[0, 0].item() == -0.28125


def test_ema_of_random_weights_and_a_long_decay() -> None:
    torch.manual_seed(0)
    model = _tiny_bn_model()
    ema = ModelEma(model, decay=0.999)
    hand = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        hand = {
            k: 0.999 * hand[k] + 0.001 * v if v.is_floating_point() else v.clone()
            for k, v in model.state_dict().items()
        }
    for k, v in ema.state_dict().items():
        assert torch.allclose(v, hand[k], rtol=0, atol=1e-6), k


def test_ema_decay_is_not_inverted() -> None:
    """With d = 0.9 one update from 0 towards 1 moves 10% of the way, not 90%."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    ema = ModelEma(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for n in range(1, 4):
        ema.update(model)
        assert ema.module.weight.item() == pytest.approx(1 - 0.9**n, abs=1e-7)
    # The EMA's weights are not trained: no gradients flow into them.
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_rejects_bad_decay() -> None:
    with pytest.raises(ValueError, match=r"EMA decay must be in \(0, 1\)"):
        ModelEma(nn.Linear(1, 1), decay=1.5)


# -- schedules, optimizer, lr scaling -------------------------------------------------------
def _sched(**kw):
    return load_config(None, [f"schedule.{k}={v}" for k, v in kw.items()]).schedule


def test_warmup_then_step_decay_at_epoch_boundaries() -> None:
    cfg = _sched(name="step", step_size=2, gamma=0.1, warmup_epochs=1, warmup_start_factor=0.2)
    f = lr_factor_fn(cfg, steps_per_epoch=4, total_steps=40, base_lr=0.1)
    # Warm-up over the first 4 steps: 0.2, 0.4, 0.6, 0.8, then 1.
    assert [round(f(s), 6) for s in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert f(7) == 1.0 and f(8) == pytest.approx(0.1) and f(16) == pytest.approx(0.01)


def test_multistep_and_paper_cifar_milestones() -> None:
    cfg = _sched(name="multistep", milestones="[150, 225]", gamma=0.1, warmup_epochs=0)
    f = lr_factor_fn(cfg, steps_per_epoch=10, total_steps=3000, base_lr=0.1)
    assert f(1499) == 1.0
    assert f(1500) == pytest.approx(0.1)
    assert f(2249) == pytest.approx(0.1)
    assert f(2250) == pytest.approx(0.01)


def test_cosine_reaches_min_lr_and_constant_stays() -> None:
    cfg = _sched(name="cosine", warmup_epochs=0, min_lr=0.001)
    f = lr_factor_fn(cfg, steps_per_epoch=10, total_steps=100, base_lr=0.1)
    assert f(0) == 1.0
    assert f(50) == pytest.approx((0.01 + 1) / 2)
    assert f(100) == pytest.approx(0.01)
    g = lr_factor_fn(_sched(name="constant", warmup_epochs=0), 10, 100, 0.1)
    assert {g(s) for s in (0, 37, 99)} == {1.0}


def test_scheduler_steps_per_iteration() -> None:
    cfg = _sched(name="step", step_size=1, gamma=0.5, warmup_epochs=0)
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.4)
    sched = build_scheduler(opt, cfg, steps_per_epoch=3, total_steps=9)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.4, 0.4, 0.4, 0.2, 0.2, 0.2, 0.1])


def test_linear_lr_scaling() -> None:
    optim = load_config(None, ["optim.lr=0.1", "optim.lr_base_batch=256"]).optim
    assert scaled_lr(optim, 512) == pytest.approx(0.2)
    assert scaled_lr(optim, 32) == pytest.approx(0.0125)
    assert scaled_lr(load_config(None, ["optim.lr=0.1"]).optim, 512) == 0.1


def test_no_decay_group_holds_bn_and_biases() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(2, 3, 5, 5))
    optim = load_config(None, ["optim.no_decay_bn_bias=true", "optim.weight_decay=0.001"]).optim
    opt = build_optimizer(model, optim, lr=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.001 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and len(decay["params"]) == 2
    assert all(p.ndim == 1 for p in no_decay["params"]) and len(no_decay["params"]) == 4
    assert opt.defaults["nesterov"] is True  # the demo default, as the paper's CIFAR recipe
    flat = load_config(None, ["optim.no_decay_bn_bias=false"]).optim
    assert len(build_optimizer(model, flat, lr=0.1).param_groups) == 1


def test_nesterov_without_momentum_is_a_config_error() -> None:
    optim = load_config(None, ["optim.nesterov=true", "optim.momentum=0"]).optim
    with pytest.raises(ConfigError, match=r"nesterov needs optim\.momentum > 0"):
        build_optimizer(nn.Linear(1, 1), optim, lr=0.1)


# -- RNG states ----------------------------------------------------------------------------
def test_rng_state_roundtrips_through_a_weights_only_file() -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    buf = io.BytesIO()
    torch.save({"rng": get_rng_state()}, buf)
    first = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    buf.seek(0)
    set_rng_state(torch.load(buf, weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1])
    assert first[2] == again[2]


# -- the trainer on tiny data -----------------------------------------------------------------
class TinyNet(nn.Module):
    """A BN-free net, so gradient accumulation is exactly a bigger batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _data(n: int = 32, seed: int = 0) -> TransformedDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = [i % 3 for i in range(n)]
    return TransformedDataset(TensorImages(images, labels), lambda x: x.float() / 255.0)


def _cfg(*overrides: str):
    base = [
        "train.epochs=1",
        "train.batch_size=16",
        "train.ema_decay=null",
        "train.label_smoothing=0",
        "train.channels_last=false",
        "train.precision=fp32",  # numerics compared with fp32 references
        "train.progress=false",
        "train.checkpoint_every_steps=null",
        "optim.weight_decay=0",
        "optim.momentum=0",
        "optim.nesterov=false",
        "optim.lr=0.5",
        "schedule.name=constant",
        "schedule.warmup_epochs=0",
    ]
    return load_config(None, [*base, *overrides])


def _trainer(model: nn.Module, cfg, run_dir: Path, **kw) -> Trainer:
    kw.setdefault("val_set", None)
    kw.setdefault("test_set", None)
    setup = RunSetup(
        model=model,
        train_set=kw.pop("train_set", _data()),
        val_set=kw.pop("val_set"),
        test_set=kw.pop("test_set"),
        cfg=cfg,
        run_dir=run_dir,
        classes=["a", "b", "c"],
        preprocess={"image_size": 8},
        device=torch.device("cpu"),
    )
    return Trainer(setup, log=lambda _: None)


def test_gradient_accumulation_equals_the_big_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    a = TinyNet()
    b = TinyNet()
    b.load_state_dict(a.state_dict())
    initial = {k: v.clone() for k, v in a.state_dict().items()}
    _trainer(a, _cfg("train.batch_size=16"), tmp_path / "a").fit()
    _trainer(b, _cfg("train.batch_size=8", "train.accumulate_steps=2"), tmp_path / "b").fit()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6), name
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 2  # 4 micro-batches
    # Equal weights prove nothing if neither run trained: every tensor moved, in both runs.
    for name, w0 in initial.items():
        for run in (a, b):
            assert (run.state_dict()[name] - w0).abs().max() > 1e-4, name


def test_one_loader_per_split_for_the_whole_run(tmp_path: Path, monkeypatch) -> None:
    """The train loader is built once (its workers persist) and re-seeded each epoch through
    its sampler; the weights are those of loaders built afresh per epoch (the old way)."""
    from resnext.engine import trainer as trainer_module
    from resnext.engine import validation

    built: list[int] = []

    def counting(*args, **kwargs):
        built.append(kwargs.get("num_workers", 0))
        loader = make_loader(*args, **kwargs)
        assert loader.persistent_workers == (kwargs.get("num_workers", 0) > 0)
        return loader

    monkeypatch.setattr(trainer_module, "make_loader", counting)
    monkeypatch.setattr(validation, "make_loader", counting)
    cfg = _cfg("train.epochs=3", "train.batch_size=8", "data.num_workers=1")
    torch.manual_seed(0)
    model = TinyNet()
    reference = TinyNet()
    reference.load_state_dict(model.state_dict())
    _trainer(model, cfg, tmp_path / "a", val_set=_data(12, seed=1)).fit()
    assert built == [1, 1]  # train and val, once each, for three epochs
    # Hand-made reference: a fresh loader per epoch with the same seeds, plain SGD lr 0.5.
    opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    for epoch in range(3):
        for x, y in make_loader(_data(), 8, LoaderOrder(shuffle=True, seed=0, epoch=epoch)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(reference(x), torch.as_tensor(y)).backward()
            opt.step()
    for k, v in reference.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_gradient_clipping_bounds_the_update(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    cfg = _cfg("train.clip_grad_norm=0.001", "optim.lr=1.0", "train.max_steps=1")
    _trainer(model, cfg, tmp_path).fit()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    # One plain SGD step with lr 1 moves the weights by exactly the clipped gradient.
    assert (after - before).norm().item() == pytest.approx(0.001, rel=1e-3)


class NaNAfter(TinyNet):
    """Gives a NaN output from the ``k``-th training forward on."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k, self.calls = k, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.k:
                return out * float("nan")
        return out


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path: Path,
) -> None:
    cfg = _cfg("train.batch_size=4", "train.checkpoint_every_steps=2")
    trainer = _trainer(NaNAfter(k=6), cfg, tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"NaN at step 6 \(epoch 1, batch 6/8\)"):
        trainer.fit()
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["step"] == 4  # the last checkpoint before the NaN, untouched
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_checkpoint_holds_every_documented_key(tmp_path: Path) -> None:
    cfg = _cfg("train.ema_decay=0.5", "train.epochs=2")
    trainer = _trainer(TinyNet(), cfg, tmp_path, val_set=_data(12, seed=1))
    result = trainer.fit()
    ckpt = load_checkpoint(tmp_path / "last.pt")
    keys = {"arch", "model", "ema", "optimizer", "scheduler", "scaler", "epoch", "epoch_step"}
    keys |= {"step", "rng", "config", "classes", "preprocess", "metrics", "format", "version"}
    assert keys <= set(ckpt)
    assert (ckpt["epoch"], ckpt["epoch_step"], ckpt["step"]) == (2, 0, 4)
    assert ckpt["scheduler"]["last_epoch"] == 4
    assert ckpt["ema"] is not None and ckpt["config"]["train"]["ema_decay"] == 0.5
    assert result.selected == "ema" and result.best_epoch in (1, 2)
    assert (tmp_path / "best.pt").exists() and (tmp_path / "curves.png").stat().st_size > 0


def _learnable(n: int = 48) -> TransformedDataset:
    """Images whose label is their brightest channel: a few SGD steps learn it."""
    g = torch.Generator().manual_seed(0)
    labels = [i % 3 for i in range(n)]
    images = torch.randint(0, 100, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    for i, y in enumerate(labels):
        images[i, y] += 120
    return TransformedDataset(TensorImages(images, labels), lambda x: x.float() / 255.0)


def test_bf16_training_computes_in_bf16_keeps_fp32_weights_and_learns(tmp_path: Path) -> None:
    torch.manual_seed(0)
    bf16, fp32 = TinyNet(), TinyNet()
    fp32.load_state_dict(bf16.state_dict())
    seen: list[torch.dtype] = []
    bf16.conv.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    cfg = ("train.epochs=6", "train.batch_size=8")
    result = _trainer(
        bf16, _cfg("train.precision=bf16", *cfg), tmp_path / "a", train_set=_learnable()
    ).fit()
    _trainer(fp32, _cfg(*cfg), tmp_path / "b", train_set=_learnable()).fit()
    assert seen and set(seen) == {torch.bfloat16}  # the convs ran in bf16
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # master weights fp32
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.history[-1]["train_top1"] == 100.0
    # The same trajectory as fp32 up to bf16 rounding: close, but not the same numbers.
    diff = max(
        float((a - b).abs().max())
        for a, b in zip(bf16.state_dict().values(), fp32.state_dict().values(), strict=True)
    )
    assert 0 < diff < 0.05


def test_fp16_on_cpu_is_refused() -> None:
    """By the run's set-up, which resolves and checks the config before anything is built."""
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_train_config(_cfg("train.precision=fp16"), torch.device("cpu"))


class Oracle(nn.Module):
    """Ranks the classes by distance to the prediction each image carries in pixel (0, 0, 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pred = x[:, 0, 0, 0].round()[:, None]
        j = torch.arange(6, dtype=torch.float32)[None]
        return -(j - pred).abs() - 0.01 * j


def test_the_metric_loop_counts_top1_and_top5_exactly() -> None:
    labels = [0, 1, 2, 3, 4, 5, 0, 1]
    preds = [0, 1, 2, 3, 0, 0, 0, 5]  # 5 of 8 right; (4, 0) is 5th, (5, 0) 6th, (1, 5) 5th
    images = torch.zeros(8, 3, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor(preds, dtype=torch.uint8)
    ds = TransformedDataset(TensorImages(images, labels), lambda x: x.float())
    loader = make_loader(ds, 3)
    out = run_metrics([Oracle()], loader, 6, progress=False).final
    assert out.num_images == 8
    assert out.top1 == pytest.approx(100 * 5 / 8)
    assert out.top5 == pytest.approx(100 * 7 / 8)
    logits = Oracle()(images.float())
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor(labels)).item()
    assert out.loss == pytest.approx(expected, rel=1e-6)


def test_resume_on_data_of_another_size_is_refused(tmp_path: Path) -> None:
    """data.root may move on resume, but it must hold the run's data: another image count
    would silently change the steps per epoch, the schedule and the order."""
    torch.manual_seed(0)
    _trainer(TinyNet(), _cfg(), tmp_path).fit()
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["metrics"]["train_images"] == 32
    other = _trainer(TinyNet(), _cfg(), tmp_path / "b", train_set=_data(24))
    with pytest.raises(DataError, match="now has 24 images and the checkpoint's run had 32"):
        other.load_state(ckpt)
