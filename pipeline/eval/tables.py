"""The report's numbers and Markdown tables: each number keeps three significant digits of its cell's largest number,
never finer than its column's format; a paired difference keeps two significant digits of its interval's width."""

from __future__ import annotations

import math
from typing import Any

from pipeline.eval.compare import COLUMNS
from pipeline.eval.stats import advantage, significant_decimals


def decimals(values: list[float], finest: int) -> int:
    """Decimals for three significant digits of the largest of ``values``, at most ``finest``."""
    top = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    return finest if top == 0 else min(finest, max(0, 2 - math.floor(math.log10(top))))


def number(value: float, places: int, sign: str = "") -> str:
    """``value`` with ``places`` decimals, without the sign of a value that rounds to zero (an FVD of -1e-9 is 0)."""
    text = f"{value:{sign}.{places}f}"
    return text.lstrip("+-") if float(text) == 0 else text


def cell(block: dict[str, Any] | None, fmt: str) -> str:
    """``value [low, high]`` (``value`` alone without an interval, ``n/a`` without a value)."""
    if not block or block.get("value") is None:
        return "n/a"
    finest = int(fmt.strip(".f"))
    if block.get("low") is None:
        return number(block["value"], decimals([block["value"]], finest))
    d = decimals([block["value"], block["low"], block["high"]], finest)
    return f"{number(block['value'], d)} [{number(block['low'], d)}, {number(block['high'], d)}]"


def difference(r: dict[str, Any], finest: int = 4) -> tuple[str, str]:
    """A paired difference and its interval, signed: two significant digits of the interval's width, at most three
    of the largest number."""
    d = min(significant_decimals(r["low"], r["high"]), decimals([r["diff"], r["low"], r["high"]], finest))
    return number(r["diff"], d, "+"), f"[{number(r['low'], d, '+')}, {number(r['high'], d, '+')}]"


def advantage_text(r: dict[str, Any], unit: str) -> str:
    """The winner's margin and its interval, e.g. ``0.31 dB [0.12, 0.50]``."""
    value, low, high = advantage(r)
    d = min(significant_decimals(low, high), decimals([value, low, high], 4))
    return f"{number(value, d)}{' ' + unit if unit else ''} [{number(low, d)}, {number(high, d)}]"


def arrow(better: str | None) -> str:
    """The column header's direction of better: ↑, ↓, →1 or →level."""
    if better and better.startswith("nominal"):
        return "→" + better.split()[1]
    return {"higher": "↑", "lower": "↓", "one": "→1"}.get(better, "")


def table(rows: list[tuple[str, dict[str, Any]]], columns=COLUMNS) -> list[str]:
    """A Markdown table: one row per (label, metric blocks), one ``value [low, high]`` cell per column."""
    header = ["", *(f"{label} {arrow(better)}".strip() for _, label, _, better, _ in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for label, block in rows:
        cells = (cell(block.get(metric), fmt) for metric, _, _, _, fmt in columns)
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return lines
