"""Plain-text tables for the command line (one helper for every command)."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(
    rows: Sequence[Sequence[object]], left: int = 1, rule_before_last: bool = False
) -> str:
    """Align ``rows`` (the first is the header) into columns.

    Args:
        rows: header row then data rows; cells are turned into strings.
        left: how many leading columns are left-aligned (the rest are right-aligned).
        rule_before_last: draw a rule above the last row (a "total" row).
    """
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    rule = "  ".join("-" * w for w in widths)
    lines = []
    for k, r in enumerate(cells):
        if rule_before_last and k == len(cells) - 1 and k > 1:
            lines.append(rule)
        lines.append(
            "  ".join(
                c.ljust(w) if i < left else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            ).rstrip()
        )
        if k == 0:
            lines.append(rule)
    return "\n".join(lines)
