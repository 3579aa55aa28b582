"""The resolved config as people read it: each key with its one-line comment (read from the
dataclasses of :mod:`resnext.config`) and where its value came from (recipe or override).
``resnext train CONFIG --print-config`` prints :func:`format_config`."""

from __future__ import annotations

import ast
import functools
import inspect
import io
import textwrap
import tokenize
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from .config import RENAMED, Config, from_dict, merge_overrides, parse_override, read_recipe


def _current_key(path: str) -> str:
    """A key as the config names it today (``train.amp`` -> ``train.precision``)."""
    return RENAMED[path][0] if path in RENAMED else path


def load_config_sources(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> dict[str, str]:
    """Where each key that is not a default comes from: ``"section.key"`` -> ``"recipe"``
    (set in the file at ``path``) or ``"override"`` (a ``key=value``, which wins).

    Reads and validates exactly as :func:`load_config` does, so it raises the same errors.
    Keys are named as today (an old recipe's ``train.amp`` counts as ``train.precision``).
    """
    data = read_recipe(path)
    from_dict(merge_overrides(data, overrides or []))
    sources: dict[str, str] = {}
    for section, values in data.items():
        for key in values:
            sources[_current_key(f"{section}.{key}")] = "recipe"
    for text in overrides or []:
        (section, key), _ = parse_override(text)
        sources[_current_key(f"{section}.{key}")] = "override"
    return sources


def _comments_of(cls: type) -> dict[str, str]:
    """Field name -> its comment in ``cls``'s source: the ``# ...`` on the field's line, or
    else the block of comment lines right above it."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.update((tok.start[0], tok.end[0]))
    (node,) = ast.parse(source).body
    out: dict[str, str] = {}
    for stmt in node.body:  # type: ignore[attr-defined]
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        line = stmt.end_lineno or stmt.lineno
        if line in comments:
            out[stmt.target.id] = comments[line]
            continue
        above, i = [], stmt.lineno - 1
        while i in comments and i not in code_lines:
            above.insert(0, comments[i])
            i -= 1
        if above:
            out[stmt.target.id] = " ".join(above)
    return out


@functools.cache
def _section_docs() -> dict[str, str]:
    return _comments_of(Config)


@functools.cache
def _field_docs() -> dict[str, str]:
    hints = typing.get_type_hints(Config)
    docs: dict[str, str] = {}
    for section in fields(Config):
        comments = _comments_of(hints[section.name])
        for f in fields(hints[section.name]):
            docs[f"{section.name}.{f.name}"] = comments.get(f.name, "")
    return docs


def field_docs() -> dict[str, str]:
    """``"section.key"`` -> the one-line comment of that field in this file's dataclasses
    (an empty string where a field has none, which tests/config/test_recipes.py refuses)."""
    return dict(_field_docs())


def _yaml_value(value: Any) -> str:
    """One value as a one-line YAML flow scalar or list that reads back as itself."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"))
    return text.removesuffix("\n...\n").strip()


# Comments start at this column, or two spaces after a longer line.
_COMMENT_COLUMN = 44


def format_config(cfg: Config, sources: dict[str, str] | None = None) -> str:
    """The fully resolved ``cfg`` as YAML: one ``key: value  # comment`` line per field,
    sections in :meth:`Config.to_dict` order, each field's comment from this file.

    Keys in ``sources`` (from :func:`load_config_sources`) are marked ``# [recipe]`` or
    ``# [override]``; the unmarked rest are defaults. The text is a valid recipe:
    ``from_dict(yaml.safe_load(format_config(cfg)))`` rebuilds ``cfg``.
    """
    sources = sources or {}
    docs, section_docs = _field_docs(), _section_docs()
    rows: list[tuple[str, str]] = []
    for section, values in cfg.to_dict().items():
        rows.append((f"{section}:", section_docs.get(section, "")))
        for key, value in values.items():
            path = f"{section}.{key}"
            mark = f"[{sources[path]}] " if path in sources else ""
            rows.append((f"  {key}: {_yaml_value(value)}", mark + docs.get(path, "")))
    width = max((len(text) for text, _ in rows if len(text) < _COMMENT_COLUMN), default=0)
    lines = [
        "# The fully resolved config: [recipe] / [override] mark the keys set by the recipe",
        "# file or a key=value override; every other key is a default of resnext.config.",
    ]
    for text, comment in rows:
        lines.append(f"{text.ljust(width)}  # {comment}".rstrip() if comment else text)
    return "\n".join(lines) + "\n"
