"""``resnext pack [CONFIG] [data.key=value ...] -o FOLDER``: a dataset as WebDataset shards.

Reads the dataset the config's ``data`` section names (any reader, the same recipes and
overrides as ``resnext train``), calls :func:`resnext.data.pack.pack_dataset` and prints
what it wrote; ``resnext train data.name=webdataset data.root=FOLDER`` trains from it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import load_config
from ..data.pack import DEFAULT_SHARD_BYTES, pack_dataset, parse_size
from ..data.shards import SPLITS
from ..table import format_table

HELP = "write a dataset into WebDataset tar shards (data.name=webdataset trains from them)"
USAGE = "resnext pack [CONFIG.yaml] [data.key=value ...] -o FOLDER [--shard-size 256MB]"
DESCRIPTION = """\
Write the train, val and test splits of any dataset the readers read (the config's data section:
a recipe and/or data.key=value overrides, as for resnext train) into WebDataset tar shards with
an index.json of classes and counts. Image files are stored as they are (their own bytes),
in-memory datasets as PNG. Train from the result with: resnext train data.name=webdataset
data.root=FOLDER
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None, help="YAML recipe (default: the defaults)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. data.name=cifar10")
    p.add_argument("-o", "--output", required=True, metavar="FOLDER", help="empty folder to fill")
    p.add_argument(
        "--shard-size",
        default=f"{DEFAULT_SHARD_BYTES // 1024**2}MB",
        help="close a shard before it passes this size (default %(default)s; k/M/G = 1024^n)",
    )
    p.add_argument(
        "--shard-samples",
        type=int,
        default=None,
        help="and before it passes this many samples (default: no limit)",
    )
    p.add_argument(
        "--splits",
        nargs="+",
        choices=SPLITS,
        default=list(SPLITS),
        help="the splits to write (default: every split the dataset has)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes reading and checking the images (default: data.num_workers)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the train split's shuffled order")
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="copy image files without decoding each once (faster; a broken file is then "
        "found in training)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).is_file():
        overrides.insert(0, config)  # `resnext pack data.name=cifar10 ...`: no recipe file
        config = None
    cfg = load_config(config, overrides).data
    workers = cfg.num_workers if args.workers is None else args.workers
    index = pack_dataset(
        cfg,
        args.output,
        shard_bytes=parse_size(args.shard_size),
        shard_samples=args.shard_samples,
        splits=args.splits,
        workers=workers,
        seed=args.seed,
        verify=args.verify,
        progress=not args.no_progress,
        say=lambda _: None,
    )
    rows: list[list[object]] = [["split", "images", "shards", "MiB", "skipped", "order"]]
    for name, entry in index["splits"].items():
        size = sum(s["bytes"] for s in entry["shards"]) / 1024**2
        rows.append(
            [
                name,
                entry["count"],
                len(entry["shards"]),
                f"{size:.1f}",
                len(entry.get("skipped", [])),
                entry["order"],
            ]
        )
    print(f"packed {cfg.name} ({len(index['classes'])} classes) into {args.output}:")
    print(format_table(rows))
    print(f"train from it: resnext train data.name=webdataset data.root={args.output}")
    return 0
