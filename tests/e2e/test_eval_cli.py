"""``resnext eval``: its numbers equal a direct computation; ensembles, crops, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import resnext
from helpers import SMALL_TEST, TINY, direct_probs, tiny_checkpoint, tiny_run
from resnext import EvalOptions, RuntimeOptions, create_model
from resnext.cli import main
from resnext.commands import eval as eval_cmd


def run_json(tmp_path: Path, *argv: str) -> dict:
    out = tmp_path / "r.json"
    assert main(["eval", SMALL_TEST, *argv, "--no-progress", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_eval_reports_what_a_direct_computation_gives(tmp_path: Path, capsys) -> None:
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    res = run_json(tmp_path, str(ckpt))
    probs, y = direct_probs(ckpt)
    m = res["members"][0]
    assert m["num_images"] == len(y) == 50  # 5 per class
    assert m["top1"] == pytest.approx(100 * float((probs.argmax(1) == y).float().mean()))
    top5 = (probs.topk(5, 1).indices == y[:, None]).any(1).float().mean()
    assert m["top5"] == pytest.approx(100 * float(top5))
    assert m["loss"] == pytest.approx(float(-probs[torch.arange(len(y)), y].log().mean()), 1e-5)
    assert sum(v["images"] for v in m["per_class"].values()) == 50
    assert res["ensemble"] is None and res["dataset"]["split"] == "test"
    out = capsys.readouterr().out
    assert "top-1 %" in out and "per-class top-1 accuracy" in out and str(ckpt) in out


def test_ensemble_of_two_checkpoints_averages_softmax(tmp_path: Path, capsys) -> None:
    a, b = tiny_checkpoint(tmp_path / "a.pt"), tiny_checkpoint(tmp_path / "b.pt", seed=1)
    res = run_json(tmp_path, str(a), str(b))
    (pa, y), (pb, _) = direct_probs(a), direct_probs(b)
    ens = (pa + pb) / 2
    assert [m["name"] for m in res["members"]] == [str(a), str(b)]
    e = res["ensemble"]
    assert e["top1"] == pytest.approx(100 * float((ens.argmax(1) == y).float().mean()))
    assert e["loss"] == pytest.approx(float(-ens[torch.arange(len(y)), y].log().mean()), 1e-5)
    table = capsys.readouterr().out
    assert "ensemble" in table and str(a) in table and str(b) in table


def test_evaluate_from_python_is_what_the_command_prints(tmp_path: Path) -> None:
    a, b = tiny_checkpoint(tmp_path / "a.pt"), tiny_checkpoint(tmp_path / "b.pt", seed=1)
    cli = run_json(tmp_path, str(a), str(b), "--ten-crop", "--resize", "36")
    report = resnext.evaluate(
        EvalOptions(
            [a, b],
            data={"test_fraction": 0.03},
            ten_crop=True,
            resize=36,
            runtime=RuntimeOptions(device="cpu"),
        )
    )
    assert report.to_dict() == json.loads(json.dumps(cli))
    assert report.ensemble is not None and report.final.num_images == cli["ensemble"]["num_images"]
    assert cli["mode"] == {"ten_crop": True, "precision": "fp32"}
    assert cli["members"][0]["preprocess"]["eval_resize"] == 36


def test_ensemble_of_different_datasets_is_refused(tmp_path: Path, capsys) -> None:
    a = tiny_checkpoint(tmp_path / "a.pt")
    b = tiny_checkpoint(tmp_path / "b.pt", data={"name": "digits", "split_seed": 3})
    assert main(["eval", str(a), str(b)]) == 2
    assert "different datasets or splits (data.split_seed: 0 vs 3)" in capsys.readouterr().err
    c = tiny_checkpoint(tmp_path / "c.pt", classes=list("abcdefghij"))
    assert main(["eval", str(a), str(c)]) == 2
    assert "same classes" in capsys.readouterr().err


def test_ema_weights_by_default_when_training_selected_them(tmp_path: Path) -> None:
    torch.manual_seed(5)
    other = create_model("resnext29_2x4d", num_classes=10, **TINY).state_dict()
    tiny_checkpoint(tmp_path / "b.pt", seed=5)  # its "model" weights are `other`
    ckpt = tiny_checkpoint(tmp_path / "a.pt", ema=other, metrics={"selected": "ema"})
    (pe, y), (pm, _) = direct_probs(tmp_path / "b.pt"), direct_probs(ckpt)
    loss = {k: float(-p[torch.arange(len(y)), y].log().mean()) for k, p in (("e", pe), ("m", pm))}
    assert loss["e"] != pytest.approx(loss["m"], rel=1e-3)
    auto = run_json(tmp_path, str(ckpt))["members"][0]
    assert auto["ema"] is True and auto["loss"] == pytest.approx(loss["e"], rel=1e-5)
    plain = run_json(tmp_path, str(ckpt), "--no-ema")["members"][0]
    assert plain["ema"] is False and plain["loss"] == pytest.approx(loss["m"], rel=1e-5)


def test_larger_crop_and_ten_crop(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    big = run_json(tmp_path, str(ckpt), "--crop", "40")
    assert big["members"][0]["preprocess"]["image_size"] == 40
    assert big["members"][0]["num_images"] == 50

    ten = run_json(tmp_path, str(ckpt), "--ten-crop", "--resize", "36", "data.test_fraction=0.01")
    assert ten["mode"]["ten_crop"] is True and ten["members"][0]["num_images"] == 20
    assert ten["members"][0]["preprocess"]["eval_resize"] == 36


def test_confusion_png_and_its_class_limit(tmp_path: Path, capsys, monkeypatch) -> None:
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    png = tmp_path / "conf.png"
    argv = ["eval", str(ckpt), "data.test_fraction=0.01", "--no-progress", "--confusion", str(png)]
    assert main(argv) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    monkeypatch.setattr(eval_cmd, "MAX_CONFUSION_CLASSES", 5)
    assert main(argv) == 2
    assert "--confusion draws at most 5 classes" in capsys.readouterr().err


def test_plain_weights_with_a_model_name(tmp_path: Path) -> None:
    model = create_model("resnext29_2x4d", num_classes=10)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    res = run_json(
        tmp_path, "--model", "resnext29_2x4d", "--weights", str(tmp_path / "w.pth"),
        "data.name=digits", "data.mean=[0.3,0.3,0.3]", "data.std=[0.3,0.3,0.3]",
    )  # fmt: skip
    assert res["members"][0]["preprocess"]["mean"] == [0.3] * 3
    assert res["members"][0]["num_images"] == 50


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--split", "val", "data.val_fraction=0"], "has no val split; evaluate the test split"),
        (["--ema"], "no EMA weights"),
        (["train.epochs=3"], "eval takes only data.* overrides"),
        (["data.name=cifar11"], "data.name must be one of"),
        (["--crop", "64", "--resize", "40"], "smaller than the crop"),
    ],
)
def test_user_errors(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    assert main(["eval", str(ckpt), *argv]) == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["eval", str(tmp_path / "nope.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_reproduces_the_test_accuracy_training_printed(tmp_path: Path, capsys) -> None:
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        rc = main(
            [
                "train", *tiny_run(), "data.test_fraction=0.02", "data.val_fraction=0.02",
                "train.batch_size=16", "train.epochs=1", "train.max_steps=2",
                "train.ema_decay=0.9",
                f"train.output_dir={tmp_path}", "train.run_name=r",
            ]
        )  # fmt: skip
    finally:  # `resnext train` sets process-wide torch flags
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
    assert rc == 0
    printed = capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").open()]
    test = next(r for r in records if r.get("kind") == "test")
    assert f"{test['test_top1']:.2f}%" in printed and test["weights"] == "ema"
    assert test["checkpoint"] == "last.pt"  # a max_steps stop inside epoch 1: nothing selected

    res = run_json(tmp_path, str(tmp_path / "r" / "last.pt"), "data.test_fraction=0.02")
    m = res["members"][0]
    assert m["ema"] is True and m["num_images"] == test["test_images"]
    assert m["top1"] == pytest.approx(test["test_top1"], abs=1e-9)
    assert m["top5"] == pytest.approx(test["test_top5"], abs=1e-9)
    assert m["loss"] == pytest.approx(test["test_loss"], rel=1e-5)


def test_explain_writes_a_gallery_of_the_surest_mistakes_and_least_sure_answers(
    tmp_path: Path, capsys
) -> None:
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    out = tmp_path / "gallery"
    res = run_json(tmp_path, str(ckpt), "--explain", str(out), "--explain-count", "3")
    probs, y = direct_probs(ckpt)
    conf, pred = probs.max(1)
    wrong = sorted((i for i in range(len(y)) if pred[i] != y[i]), key=lambda i: -conf[i])
    right = sorted((i for i in range(len(y)) if pred[i] == y[i]), key=lambda i: conf[i])
    records = json.loads((out / "gallery.json").read_text())
    mistakes = [r for r in records if r["kind"] == "mistake"]
    unsure = [r for r in records if r["kind"] == "unsure"]
    assert [r["index"] for r in mistakes] == wrong[:3]
    assert [r["index"] for r in unsure] == right[:3]
    for r in records:
        i = r["index"]
        assert (r["true"], r["predicted"]) == (str(int(y[i])), str(int(pred[i])))
        assert r["confidence"] == pytest.approx(float(conf[i]), abs=1e-5)
        assert (out / r["file"]).stat().st_size > 0
    page = (out / "index.html").read_text()
    assert all(f'src="{r["file"]}"' in page for r in records)
    assert res["gallery"] == str(out / "index.html")
    assert f"wrote {out / 'index.html'}" in capsys.readouterr().out
    b = tiny_checkpoint(tmp_path / "b.pt", seed=1)
    assert main(["eval", str(ckpt), str(b), "--explain", str(out), SMALL_TEST]) == 2
    assert "not an ensemble of 2" in capsys.readouterr().err
