"""The ``resnext`` command: one sub-command per job.

Each sub-command lives in its own module under :mod:`resnext.commands` and exposes ``HELP``
(its line in ``resnext --help``), optionally ``DESCRIPTION`` and ``USAGE``,
``add_arguments(parser)`` and a ``run(args) -> int`` handler. Errors a
user can cause (:class:`~resnext.errors.ResnextError`) print one line; others are bugs and
keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import ResnextError

COMMANDS = (
    "models",
    "complexity",
    "train",
    "eval",
    "predict",
    "convert",
    "export",
    "quantize",
    "average",
    "bench",
    "pack",
    "serve",
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``resnext`` parser; with ``only``, just that sub-command is registered, so running
    one command imports only its own module (``resnext predict`` needs no training code)."""
    parser = argparse.ArgumentParser(
        prog="resnext", description="ResNeXt (Xie et al., CVPR 2017): models, training, evaluation."
    )
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"resnext {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in (only,) if only in COMMANDS else COMMANDS:
        try:
            module = importlib.import_module(f"resnext.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"resnext.commands.{name}":
                continue  # sub-command not part of this build
            raise
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", None),
            usage=getattr(module, "USAGE", None),
        )
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        argv = ["train"]  # the main job: `resnext` alone trains on the built-in dataset
    parser = build_parser(only=argv[0])
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except ResnextError as e:  # anything else is a bug and keeps its traceback
        print(f"resnext {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"resnext {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
