"""Compare the metrics.json files of two output trees leaf by leaf: did a code change move any number?

    python -m benchmarks.compare_metrics BEFORE AFTER [--dataset demo]

BEFORE and AFTER are clone directories, each holding outputs/<dataset>/runs/*/eval/metrics.json (e.g. two fresh
clones that each ran `make demo THREADS=1`; pin the threads, since another thread count sums floats in another
order). Every leaf is compared exactly, with each clone's own path replaced by <clone>. Leaves that only say when
and with which commit a file was made are counted apart, as are the recorded input fingerprints (they change with
any store format version); every other difference is printed. Exit status 1 when a number differs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterator

WHEN = ("code_version", "created", "seconds", "forecast_code_version")
FINGERPRINTS = ("fingerprint", "inputs.forecasts", "protocol.forecasts_fingerprint")


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every leaf of a JSON document; list items as path[i]."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from leaves(value, f"{prefix}[{i}]")
    else:
        yield prefix, node


def flat(path: Path, clone: Path) -> dict[str, Any]:
    """A metrics.json as {path: leaf}, with the clone's own directory written as <clone> in keys and strings."""
    unclone = lambda v: v.replace(str(clone), "<clone>") if isinstance(v, str) else v  # noqa: E731
    return {unclone(k): unclone(v) for k, v in leaves(json.loads(path.read_text()))}


def kind(key: str) -> str:
    """'when' (time or commit, incl. the hash cache's mtime of a file), 'fingerprint', or 'other'."""
    if key.split(".")[-1] in WHEN or (key.startswith("file_hashes.") and key.endswith("[1]")):
        return "when"
    return "fingerprint" if key in FINGERPRINTS else "other"


def compare(before: Path, after: Path, dataset: str = "demo") -> tuple[list[str], bool]:
    """The report's lines, and whether any number differs (or a run is missing)."""
    files = sorted(p.relative_to(before) for p in before.glob(f"outputs/{dataset}/runs/*/eval/metrics.json"))
    if not files:
        return [f"no outputs/{dataset}/runs/*/eval/metrics.json under {before}"], True
    lines, numbers_differ = [], False
    for rel in files:
        if not (after / rel).is_file():
            lines.append(f"{rel}: missing in {after}")
            numbers_differ = True
            continue
        a, b = flat(before / rel, before), flat(after / rel, after)
        diffs = {"when": [], "fingerprint": [], "other": []}
        for key in sorted(set(a) | set(b)):
            if a.get(key, "<absent>") != b.get(key, "<absent>"):
                diffs[kind(key)].append((key, a.get(key, "<absent>"), b.get(key, "<absent>")))
        count = sum(isinstance(v, (int, float)) for v in a.values())
        lines.append(f"{rel}: {len(a)} leaves ({count} numbers); identical except: {len(diffs['when'])} time/commit, "
                     f"{len(diffs['fingerprint'])} input fingerprints, {len(diffs['other'])} other")
        lines += [f"    {key}: {str(x)[:90]!r} -> {str(y)[:90]!r}" for key, x, y in diffs["other"]]
        numbers_differ |= any(isinstance(v, (int, float)) for _, x, y in diffs["other"] for v in (x, y))
    return lines, numbers_differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--dataset", default="demo")
    args = parser.parse_args()
    lines, numbers_differ = compare(args.before.resolve(), args.after.resolve(), args.dataset)
    print("\n".join(lines))
    raise SystemExit(1 if numbers_differ else 0)


if __name__ == "__main__":
    main()
