"""The output protocol every stage follows: compare, decide, lock, decide again, recover, tell every rank.

An output records its inputs and their fingerprint. :func:`decide`: same fingerprint -> "up to date" (or "resume"
if unfinished), no record -> "create", other inputs -> "stale" (refused, naming what changed) or, where the stage
never refuses or under ``--force``, "rebuild" (in place, or at ``<output>.rebuild``, swapped in when complete).
:func:`settle`: decide without a lock (up-to-date checks never collide); for work take the lock, decide again,
recover an interrupted swap, remove dead writers' temporaries; rank 0 decides for every rank. Torch-free.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.run.locks import LockedError, lock_file, output_lock
from pipeline.run.records import changed_keys, clean_temporaries, fingerprint, recover_replacement

REBUILD = ".rebuild"  # a --force rebuild beside the output: <output>.rebuild, swapped in when complete
WORK = ("create", "rebuild", "resume")
SHOWN_CHANGES = 6  # the changed inputs a message names before "..."


@dataclass(frozen=True)
class Output:
    """What a stage writes and how the protocol treats it."""

    stage: str  # the messages' prefix: 'encode', 'train', ...
    path: str  # the output: a file, a directory or a store URL
    made: str = "made"  # "<path> was <made> from different inputs"
    remedy: str = ""  # what a refusal advises; '' = an output made from other inputs is rebuilt, never refused
    beside: bool = False  # --force rebuilds at <path>.rebuild (else in place)
    resumable: bool = True  # an unfinished output of the same inputs is continued (else rebuilt)
    force_redoes: bool = False  # --force rebuilds even an up-to-date output
    read: Callable[[str], dict[str, Any]] = lambda _: {}  # the record of a path (for the rebuild beside)
    lock: Path | None = None  # the lock file taken for work (None: the output cannot be locked, e.g. a URL)
    notes: dict[str, str] = field(default_factory=dict)  # changed-input prefix -> what the change message adds


@dataclass(frozen=True)
class Verdict:
    """The decision for an output: what to do, where (the output or its rebuild), and what to say."""

    action: str  # up to date | resume | create | rebuild | stale (and, from settle, locked | error)
    target: str
    message: str = ""  # the line to log; for 'stale', 'locked' and 'error' the refusal
    inputs: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    changed: str = ""  # the inputs that differ from the recorded ones, as "a, b, c ..."


def changed_text(old: dict[str, Any], new: dict[str, Any], notes: dict[str, str] | None = None) -> str:
    """'a.b, c (note) ...': the inputs that differ, the first few by name, with the notes of their prefixes."""
    changed = changed_keys(old, new)
    text = ", ".join(changed[:SHOWN_CHANGES]) + (" ..." if len(changed) > SHOWN_CHANGES else "")
    return text + "".join(note for prefix, note in (notes or {}).items() if any(c.startswith(prefix) for c in changed))


def decide(out: Output, record: dict[str, Any], inputs: dict[str, Any], force: bool = False, complete: bool = True,
           missing: str = "unfinished", detail: str = "") -> Verdict:
    """The verdict for ``out``, changing nothing. ``record`` is what the output recorded ({} when there is none),
    ``complete`` whether it is finished (``missing`` says what it lacks), ``detail`` what the "up to date" line adds."""
    key = fingerprint(inputs)
    verdict = lambda action, target=out.path, message="", changed="": Verdict(  # noqa: E731
        action, target, message, inputs, key, changed)
    same = record.get("fingerprint") == key
    if not record.get("fingerprint"):  # nothing there, or a creation killed before it recorded its inputs
        return verdict("create")
    if force and out.force_redoes:
        return verdict("rebuild", message=f"{out.stage}: --force: rebuilding {out.path}")
    if same and complete:
        return verdict("up to date", message=f"{out.stage}: {out.path} is up to date ({detail}fingerprint {key})")
    if same and out.resumable:
        return verdict("resume", message=f"{out.stage}: resuming {out.path}")
    changed = missing if same else changed_text(record.get("inputs", {}), inputs, out.notes)
    if same or not out.remedy:
        return verdict("rebuild", message=f"{out.stage}: rebuilding {out.path}; changed: {changed}", changed=changed)
    if not force:
        return verdict("stale", message=f"{out.path} was {out.made} from different inputs; changed: {changed}. "
                                        f"{out.remedy}", changed=changed)
    if not out.beside:
        return verdict("rebuild", message=f"{out.stage}: --force: rebuilding {out.path}; changed: {changed}",
                       changed=changed)
    beside = out.path + REBUILD
    if out.read(beside).get("fingerprint") == key:
        return verdict("resume", beside, f"{out.stage}: --force: resuming the rebuild of {out.path} in {beside}",
                       changed)
    return verdict("rebuild", beside, f"{out.stage}: --force: rebuilding {out.path} in {beside}, which replaces it "
                                      f"when complete; changed: {changed}", changed)


def dry_run_line(out: Output, verdict: Verdict, what: str = "") -> str:
    """What a dry run says it would do; ``what`` describes a build (' (N videos)', say)."""
    if verdict.action == "up to date":
        return verdict.message
    if verdict.action in ("stale", "resume"):
        would = f"refuse: {verdict.message}" if verdict.action == "stale" else f"resume {verdict.target}"
    else:
        would = f"{verdict.action.replace('create', 'build')} {verdict.target}{what}"
        would += f" and then replace {out.path} with it" if verdict.target != out.path else ""
        would += f"; changed: {verdict.changed}" if verdict.changed else ""
    return f"{out.stage}: dry run: would {would}"


def up_to_date_line(decision: Callable[[], Verdict]) -> str | None:
    """The "up to date" line of a torch-free decision, else None (work, refusals and errors are left to the stage)."""
    try:
        verdict = decision()
    except Exception:
        return None
    return verdict.message if verdict.action == "up to date" else None


def settle(out: Output, decision: Callable[[], Verdict], held: ExitStack, log: Callable[[str], None],
           dry_run: bool = False, errors: tuple[type[Exception], type[Exception]] = (RuntimeError, RuntimeError),
           clean: Sequence[Path] = (), what: str = "", then: Callable[[Verdict], None] | None = None) -> Verdict:
    """The protocol's sequence; rank 0 decides (for work again, under the lock ``held`` keeps), every rank gets the
    verdict and raises ``errors[0]`` on a refusal, ``errors[1]`` on a failure, LockedError on a held lock.
    ``clean``: folders of dead writers' temporaries; ``what``: a dry run's description of a build; ``then``: rank 0's
    creation of the output (its failure reaches every rank too)."""
    verdict = _decide_here(out, decision, held, log, dry_run, errors[1], clean, what, then) \
        if os.environ.get("RANK", "0") == "0" else None
    if os.environ.get("WORLD_SIZE", "1") != "1":
        from pipeline.run.dist import broadcast_object

        verdict = broadcast_object(verdict)
    if verdict.action in ("stale", "locked", "error"):
        raise {"stale": errors[0], "locked": LockedError, "error": errors[1]}[verdict.action](verdict.message)
    return verdict


def _decide_here(out: Output, decision: Callable[[], Verdict], held: ExitStack, log: Callable[[str], None],
                 dry_run: bool, error: type[Exception], clean: Sequence[Path], what: str,
                 then: Callable[[Verdict], None] | None) -> Verdict:
    """Rank 0's part of :func:`settle`; every failure becomes a verdict, so no rank waits forever for it."""
    try:
        verdict = decision()
        if dry_run:
            log(dry_run_line(out, verdict, what))
            return verdict if verdict.action == "up to date" else replace(verdict, action="dry run")
        if verdict.action in WORK:
            if out.lock is not None:
                held.enter_context(output_lock(out.lock, out.path, out.stage, log))
                beside = out.path + REBUILD
                if out.beside and recover_replacement(beside, out.path, bool(out.read(beside).get("complete"))):
                    log(f"{out.stage}: put the finished rebuild {beside} in place of {out.path} (a run stopped "
                        "while swapping them)")
                clean_temporaries(out.stage, [Path(folder) for folder in clean], log)
            verdict = decision()
        if verdict.message and verdict.action != "stale":
            log(verdict.message)
        if then and verdict.action in ("create", "rebuild"):
            then(verdict)
        return verdict
    except LockedError as exc:
        return Verdict("locked", out.path, str(exc))
    except (OSError, error) as exc:  # a read-only output directory, say: the message names it
        return Verdict("error", out.path, str(exc))
    except Exception as exc:
        return Verdict("error", out.path, f"{type(exc).__name__}: {exc}")


def local_lock(path: str) -> Path | None:
    """The lock file of a local output (``.<name>.lock`` beside it); None for a URL, which has no file to lock."""
    return None if "://" in path else lock_file(path)
