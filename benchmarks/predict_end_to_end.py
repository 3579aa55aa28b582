"""`resnext predict` with its defaults beside a plain torchvision script, end to end.

Writes N JPEGs of 500x375 (:func:`resnext.benchmarking.write_jpegs`' synthetic photos) and a
torchvision resnext50_32x4d state dict (random weights, random BN statistics), then times,
as fresh processes (interpreter start-up and imports included), alternating, each --repeat
times:

- the plain script: PIL decode, resize 256, centre crop 224, eager fp32 NCHW, batches of 16,
  top-5 printed; what most users write (the script is printed with --show-script);
- ``resnext predict --model resnext50_32x4d --weights FILE FOLDER --json`` with defaults,
  first with an empty back-end cache (the ONNX export happens in the run: "cold") and then
  with the cache filled ("warm").

It checks that both give the same top-1 for every file, and prints a table of the median
seconds and the ratio to the script. Run: ``python benchmarks/predict_end_to_end.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from resnext.benchmarking import cpu_name, randomise_bn, write_jpegs
from resnext.inference.classes import imagenet_classes
from resnext.table import format_table

SCRIPT = """\
import glob, sys, torch, torchvision
from PIL import Image
from torchvision import transforms as T
model = torchvision.models.resnext50_32x4d()
model.load_state_dict(torch.load(sys.argv[1], weights_only=True))
model.eval()
tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
files = sorted(glob.glob(sys.argv[2] + "/*/*.jpg"))
with torch.inference_mode():
    for i in range(0, len(files), 16):
        x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files[i:i + 16]])
        values, indices = model(x).softmax(1).topk(5)
        for f, v, k in zip(files[i:i + 16], values.tolist(), indices.tolist()):
            print(f, k[0], v[0])
"""


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])}... failed:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each (median)")
    parser.add_argument("--show-script", action="store_true")
    args = parser.parse_args()
    if args.show_script:
        print(SCRIPT)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_jpegs(root / "images", args.images)
        folder = root / "images" / "train"
        torch.manual_seed(0)
        model = randomise_bn(torchvision.models.resnext50_32x4d())
        weights = root / "resnext50_32x4d.pth"
        torch.save(model.state_dict(), weights)
        (root / "plain.py").write_text(SCRIPT)
        plain = [sys.executable, str(root / "plain.py"), str(weights), str(folder)]
        ours = [
            sys.executable, "-m", "resnext", "predict", "--model", "resnext50_32x4d",
            "--weights", str(weights), str(folder), "--json", "--no-progress",
        ]  # fmt: skip
        env = {**os.environ, "RESNEXT_CACHE": str(root / "cache")}
        cold, _ = _timed(ours, env)  # empty cache: the ONNX export happens in this run
        times: dict[str, list[float]] = {"plain": [], "ours": []}
        outputs: dict[str, str] = {}
        for _ in range(args.repeat):
            for key, argv in (("plain", plain), ("ours", ours)):
                seconds, outputs[key] = _timed(argv, env)
                times[key].append(seconds)
        script_top1 = {
            Path(line.split()[0]).name: int(line.split()[1])
            for line in outputs["plain"].splitlines()
        }
        classes = imagenet_classes()
        script_top1 = {k: classes[i] for k, i in script_top1.items()}
        ours_top1 = {
            Path(p["path"]).name: p["topk"][0]["class"]
            for p in json.loads(outputs["ours"])["predictions"]
        }
        agree = sum(script_top1[k] == ours_top1.get(k) for k in script_top1)
    base = statistics.median(times["plain"])
    rows = [("run", "seconds (median)", "vs script")]
    rows.append(("plain torchvision script (eager fp32 NCHW)", f"{base:.2f}", "1.00x"))
    warm = statistics.median(times["ours"])
    rows.append(("resnext predict, defaults, warm cache", f"{warm:.2f}", f"{base / warm:.2f}x"))
    cold_name = "resnext predict, defaults, cold cache (1 run)"
    rows.append((cold_name, f"{cold:.2f}", f"{base / cold:.2f}x"))
    print(
        f"{args.images} JPEGs of 500x375, resnext50_32x4d, {torch.get_num_threads()} threads "
        f"({cpu_name()})"
    )
    print(format_table(rows, left=1))
    print(f"same top-1 on {agree}/{len(script_top1)} files")


if __name__ == "__main__":
    main()
