"""The documentation holds together: links resolve, every command-line option is documented,
and the package's version, license and changelog agree with each other."""

from __future__ import annotations

import argparse
import importlib.metadata
import re
from pathlib import Path

import pytest

import resnext
from resnext.cli import build_parser


def _repo_root() -> Path:
    # Found by its pyproject.toml, so this file may move into a sub-folder of tests/.
    for folder in Path(__file__).resolve().parents:
        if (folder / "pyproject.toml").is_file():
            return folder
    raise RuntimeError("no pyproject.toml above this test file")


ROOT = _repo_root()
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

_FENCE = re.compile(r"^(```|~~~)")
_INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target), with an optional "title"; [label]: target definitions.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_LINK_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lower-cased, punctuation dropped, spaces
    turned into hyphens (inline code and link markup count as their text)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts as its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, duplicates numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    result = set()
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def relative_links(path: Path) -> list[str]:
    """The relative link targets of a Markdown file (code blocks and inline code excluded)."""
    targets = []
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        definition = _LINK_DEFINITION.match(line)
        if definition:
            targets.append(definition.group(1))
            continue
        targets += _LINK.findall(_INLINE_CODE.sub("", line))
    return [t for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t)]


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{target}: no file {resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading #{anchor} in {resolved.name}")
    return problems


def test_doc_files_exist() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in DOC_FILES}
    assert {"README.md", "docs/README.md"} <= names
    assert len(DOC_FILES) >= 10


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path: Path) -> None:
    broken = broken_links(path)
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_link_checker_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# A `code` heading: here\n## Again\n## Again\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-code-heading-here) [ok](other.md#again-1) [ok](#top) [web](https://x.org)\n"
        "[gone](missing.md) [bad anchor](other.md#nowhere) `[code](ignored.md)`\n"
        "```\n[fenced](ignored.md)\n```\n# Top\n[def]: missing-too.png\n"
    )
    assert [p.split(":")[0] for p in broken_links(page)] == [
        "missing.md",
        "other.md#nowhere",
        "missing-too.png",
    ]


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, list[str]]:
    """Every sub-command (nested ones too) and the option strings its --help shows."""
    result: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                result[full] = [
                    option
                    for a in sub._actions
                    if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
                    for option in a.option_strings
                    if option.startswith("--") or len(a.option_strings) == 1
                ]
                result.update(_subcommands(sub, prefix=f"{full} "))
    return result


COMMANDS = _subcommands(build_parser())


def undocumented(command: str, options: list[str], texts: dict[str, str]) -> list[str]:
    """What of a command the docs never name: the command itself (as ``resnext CMD``), or an
    option that no page naming the command mentions."""
    naming = re.compile(rf"resnext {re.escape(command)}(?![\w-])")
    pages = [text for text in texts.values() if naming.search(text)]
    if not pages:
        return [f"resnext {command}"]
    return [
        option
        for option in options
        if not any(re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", t) for t in pages)
    ]


def test_parser_has_every_command() -> None:
    from resnext.cli import COMMANDS as NAMES

    assert set(NAMES) <= set(COMMANDS)
    assert "--max-batch" in COMMANDS["serve"] and "--output" in COMMANDS["export"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_is_documented(command: str) -> None:
    texts = {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in DOC_FILES}
    missing = undocumented(command, COMMANDS[command], texts)
    assert not missing, f"resnext {command}: not in the docs: {', '.join(missing)}"


def test_top_level_options_are_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    options = [
        o
        for a in build_parser()._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
        for o in a.option_strings
        if o.startswith("--")
    ]
    assert "--version" in options
    assert [o for o in options if f"resnext {o}" not in readme] == []


def test_option_check_finds_a_missing_option() -> None:
    texts = {"a.md": "resnext serve --port 80 --max-batch-size 3 --no-max-batch"}
    assert undocumented("serve", ["--port", "--max-batch"], texts) == ["--max-batch"]
    assert undocumented("eval", ["--port"], texts) == ["resnext eval"]


def test_version_is_the_installed_one() -> None:
    try:
        installed = importlib.metadata.version("resnext")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("resnext is not installed (imported from the source tree)")
    assert resnext.__version__ == installed


def test_version_license_and_changelog_agree() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    # The version is written once, in resnext/_version.py; pyproject reads it from there.
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "resnext._version.__version__"}
    assert project["project"]["license"] == "MIT"
    for name in project["project"]["license-files"]:
        assert (ROOT / name).is_file(), name
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License") and "The resnext authors" in license_text
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog
    assert re.search(rf"^## \[{re.escape(resnext.__version__)}\]", changelog, re.MULTILINE)
