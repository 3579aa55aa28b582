"""The package's layers: every import inside ``resnext`` (lazy ones in functions too) points
down, so there is no cycle and no back edge (STYLE.md: commands -> inference/engine/serve ->
export/convert/checkpoint/data/models -> errors/runtime)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import REPO

SRC = REPO / "src" / "resnext"

#: Each top-level module or sub-package of resnext, and its layer: it may import only from
#: lower layers (and itself).
LAYERS = {
    "_version": 0,
    "errors": 0,
    "registry_names": 0,
    "table": 0,
    "runtime": 1,
    "models": 2,  # torch alone: checked below
    "config": 2,
    "configdoc": 3,
    "data": 3,
    "benchmarking": 4,
    "checkpoint": 4,
    "convert": 5,
    "export": 5,
    "inference": 6,
    "engine": 7,  # uses inference's one metric loop; inference never imports the engine
    "serve": 7,
    "training": 8,  # builds the data and the model, then hands them to the engine
    "bench": 8,
    "commands": 9,
    "cli": 10,
    "__main__": 11,
    "__init__": 11,
}


def _unit(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path, src: Path = SRC) -> set[str]:
    """The resnext units ``path`` (a file under ``src``) imports, at any depth of its code."""
    package = list(path.relative_to(src.parent).with_suffix("").parts)
    package = package[:-1]  # relative imports start at the file's package (__init__'s own)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                if node.module:
                    names = [".".join([*base, node.module])]
                else:
                    names = [".".join([*base, a.name]) for a in node.names]
            elif node.module:
                names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "resnext" and len(parts) > 1:
                found.add(parts[1])
    return found


def _edges() -> list[tuple[str, str, Path]]:
    return [
        (_unit(path), target, path)
        for path in sorted(SRC.rglob("*.py"))
        for target in _imports(path)
        if target != _unit(path)
    ]


def test_every_unit_has_a_layer() -> None:
    units = {_unit(p) for p in SRC.rglob("*.py")}
    assert units <= set(LAYERS), f"give these a layer in LAYERS: {sorted(units - set(LAYERS))}"


def test_imports_point_down() -> None:
    upward = [
        f"{path.relative_to(SRC)}: {src} (layer {LAYERS[src]}) imports {dst} (layer {LAYERS[dst]})"
        for src, dst, path in _edges()
        if LAYERS.get(dst, -1) >= LAYERS[src]
    ]
    assert not upward, "\n".join(upward)


def test_models_import_nothing_else_of_resnext() -> None:
    assert not [(s, d) for s, d, _ in _edges() if s == "models"]


@pytest.mark.parametrize(
    ("line", "package", "expected"),
    [
        ("from ..errors import X", "data/folder.py", {"errors"}),
        ("from . import evaluate", "inference/__init__.py", {"inference"}),
        ("from .. import training", "commands/train.py", {"training"}),
        ("import resnext.engine.ema", "serve/app.py", {"engine"}),
        ("def f():\n    from ..engine import Trainer\n", "inference/x.py", {"engine"}),
    ],
)
def test_the_import_reader_resolves_relative_and_lazy_imports(
    tmp_path: Path, line: str, package: str, expected: set[str]
) -> None:
    path = tmp_path / "resnext" / package
    path.parent.mkdir(parents=True)
    path.write_text(line)
    assert _imports(path, tmp_path / "resnext") == expected
