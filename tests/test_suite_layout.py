"""The test suite's own rule: no file under tests/ imports a test module (test_*.py or a
conftest.py); what tests share lives in helpers.py (and t7write.py), never in a test file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import TESTS


def _is_test_module(name: str) -> bool:
    parts = name.split(".")
    return any(p.startswith("test_") or p == "conftest" for p in parts)


def imported_test_modules(source: str) -> list[str]:
    """The test modules ``source`` imports, at any depth: ``import``, ``from ... import``
    (relative imports included: under tests/ they can only reach test files) and
    ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if _is_test_module(a.name)]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            if node.level or _is_test_module(module):
                found.append(module)
            else:  # `from tests import test_x` is caught above; `from pkg import test_x` here
                found += [f"{module}.{a.name}" for a in node.names if _is_test_module(a.name)]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if (
                called in ("import_module", "__import__")
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
                and _is_test_module(arg.value)
            ):
                found.append(arg.value)
    return found


@pytest.mark.parametrize(
    "source",
    [
        "import test_data_readers",
        "from test_eval_cli import SMALL_TEST, direct_probs",
        "import test_data_readers as readers",
        "from tests.data.test_readers import write_jpeg",
        "from . import test_loader",
        "from .test_loader import x",
        "from data import test_readers",
        "import conftest",
        "def f():\n    from test_x import y\n",
        "import importlib\nreaders = importlib.import_module('test_data_readers')",
        "readers = __import__('test_data_readers')",
    ],
)
def test_the_check_finds_every_way_of_importing_a_test_module(source: str) -> None:
    assert imported_test_modules(source), source


def test_the_check_lets_the_shared_modules_and_libraries_through() -> None:
    source = (
        "import t7write as tw\nimport torch.testing\nfrom helpers import tiny_run, TINY\n"
        "from resnext.data import build_splits\nimport importlib\n"
        "importlib.import_module('resnext.serve')\nfrom unittest import mock\n"
    )
    assert imported_test_modules(source) == []


def test_no_file_under_tests_imports_a_test_module() -> None:
    files = sorted(TESTS.rglob("*.py"))
    assert Path(__file__).resolve() in files and TESTS / "helpers.py" in files
    offenders = {
        str(f.relative_to(TESTS)): names
        for f in files
        if (names := imported_test_modules(f.read_text(encoding="utf-8")))
    }
    assert offenders == {}, f"move what these share into tests/helpers.py: {offenders}"
