"""``moldwatch lines``: the feedback lines, from operators' answers to the line book the worker reads.

    moldwatch lines update --store S --feedback F --lines FILE   recompute every part's line from
        the answers (the rule: model_store/serving/feedback_lines.py); a new version only when a
        line changed; every version kept in FILE.log.jsonl
    moldwatch lines show --lines FILE                            the lines in effect
    moldwatch lines history --lines FILE                         every version, newest last
    moldwatch lines revert --lines FILE [--to N]                 serve version N's lines again
        (default: the one before the current; 0: every part at its trained line); the answers given
        before the revert no longer count, so the next update does not redo what was undone

Run ``update`` as often as answers arrive (the retrain CronJob's image has it; hourly is plenty: a
line moves only in steps of ``min_false_alarms`` answers).
"""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer

from model_store.errors import DataError
from model_store.serving.feedback_lines import LineBounds
from service.cli_errors import user_errors

lines_app = typer.Typer(help="Feedback lines: parts whose operators mark mostly false alarms alarm above a raised "
                        "line, within bounds; versioned and revertible.", no_args_is_help=True)

LINES_OPTION = typer.Option(..., "--lines", help="The line book file (the worker's --lines / MOLDWATCH_LINES).")


def _bounds(overrides: list[str], base: LineBounds) -> LineBounds:
    raw = base.to_dict()
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or name not in raw:
            raise DataError(f"--bound {item!r}: expected NAME=VALUE with NAME one of {', '.join(raw)}")
        raw[name] = value
    try:
        return LineBounds.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise DataError(f"--bound: {exc}") from None


def update(store: Path = typer.Option(..., "--store", help="The served model store directory (the worker's --store)."),
           feedback: Path | None = typer.Option(None, help="Operator feedback (JSON lines, as kept on "
                                                "kafka_feedback_topic)."),
           feedback_topic: str | None = typer.Option(None, help="Or read the kept answers from this Kafka topic "
                                                     "(the worker's kafka_feedback_topic; connection from "
                                                     "MOLDWATCH_KAFKA_*)."),
           lines: Path = LINES_OPTION,
           bound: list[str] = typer.Option([], "--bound", help="Change a bound, NAME=VALUE (min_false_alarms, "
                                           "min_false_alarm_share, target_quantile, step, max_line, defect_quantile, "
                                           "lot_floor); kept in the book for later updates."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Print what would change; write nothing."),
           ) -> None:
    """Recompute every part's feedback line from the operators' latest answers."""
    from model_store.serving.drift import references_from_manifest
    from model_store.serving.feedback_lines import decide_line
    from model_store.serving.line_book import LineBook, PartLine
    from model_store.serving.store import open_store
    from service.feedback import answers_by_part
    from service.line_book_file import publish, read_history, read_line_book

    served = open_store(store, verify=False)
    model_version = served.model_version
    try:
        references = references_from_manifest(served.raw.get("drift"))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{store}: drift references unreadable ({exc}); retrain the store") from None
    current = read_line_book(lines)
    same_store = current.version > 0 and current.model_version == model_version
    bounds = _bounds(bound, current.bounds if same_store else LineBounds())
    since = current.answers_since if same_store else None
    kept_from_revert = {(p.facility, p.item): p for p in current.parts if p.bound == "revert"} if same_store else {}
    answers, source = _answers(feedback, feedback_topic)
    by_part = answers_by_part(answers, model_version, since)
    parts: dict[tuple[str, str], PartLine] = dict(kept_from_revert)
    held: list[str] = []
    for key, answered in sorted(by_part.items()):
        reference = references.get(key)
        decision = decide_line(answered.false_alarms, answered.alarmed_defects, answered.defects,
                               reference.alarm_quantiles if reference is not None else None, bounds)
        if decision.raised:
            parts[key] = PartLine(key[0], key[1], decision.line, decision.bound, decision.reason, decision.false_alarms,
                                  decision.alarmed_defects, decision.defects)
        elif answered.false_alarms and key not in parts:
            held.append(f"{key[0]}/{key[1]}: {decision.reason}")
    new_parts = tuple(parts[k] for k in sorted(parts))
    previous = {(p.facility, p.item): p.line for p in current.parts} if same_store else {}
    changed = {k: (previous.get(k, 1.0), p.line) for k, p in parts.items() if previous.get(k) != p.line}
    changed.update({k: (line, 1.0) for k, line in previous.items() if k not in parts})
    typer.echo(f"{len(answers):,} answers read, {sum(len(a.false_alarms) + len(a.defects) for a in by_part.values()):,} "
               f"on {len(by_part)} parts of {model_version}" + (f" since {since}" if since else ""))
    for text in held[:20]:
        typer.echo(f"  kept at 1: {text}")
    if len(held) > 20:
        typer.echo(f"  ... and {len(held) - 20} more parts kept at their trained line")
    if not changed and same_store and bounds == current.bounds:
        typer.echo(f"unchanged: {lines} stays at version {current.version}")
        return
    for (facility, item), (old, new) in sorted(changed.items()):
        reason = parts[(facility, item)].reason if (facility, item) in parts else "no longer raised"
        typer.echo(f"  {facility}/{item}: {old:.4g} -> {new:.4g} ({reason})")
    if dry_run:
        typer.echo("dry run: nothing written")
        return
    version = max([current.version, *(b.version for b in read_history(lines))]) + 1
    book = LineBook(version, model_version, _now(), f"update from {source} ({len(answers):,} answers)",
                    bounds, new_parts, since)
    publish(lines, book)
    typer.echo(f"version {version}: {sum(1 for p in new_parts if p.line > 1.0)} parts above their trained line "
               f"({lines}; 'moldwatch lines revert --lines {lines}' undoes it)")


def _answers(feedback: Path | None, topic: str | None) -> tuple[list[dict], str]:
    """The kept answers from a file or the feedback topic, and where they came from."""
    from service.feedback import read_answers

    if (feedback is None) == (topic is None):
        raise DataError("give the answers as --feedback FILE or --feedback-topic TOPIC (one of the two)")
    if topic is not None:
        import asyncio

        from service.config import WorkerSettings
        from service.feedback_topic import read_feedback_topic

        return asyncio.run(read_feedback_topic(WorkerSettings(), topic)), f"topic {topic}"
    assert feedback is not None
    try:
        with open(feedback, encoding="utf-8") as handle:
            return read_answers(handle, str(feedback)), feedback.name
    except FileNotFoundError:
        raise DataError(f"{feedback}: feedback file not found; export the feedback topic as JSON lines or read it "
                        f"with --feedback-topic") from None


def show(lines: Path = LINES_OPTION) -> None:
    """The lines in effect."""
    from service.line_book_file import read_line_book

    if not lines.exists():
        typer.echo(f"no line book at {lines}: every part is judged at its trained line ('moldwatch lines update' "
                   f"writes one; check the path if you expected lines)")
        return
    book = read_line_book(lines)
    typer.echo(f"version {book.version} for store {book.model_version} ({book.created_at}): {book.change}")
    if book.answers_since:
        typer.echo(f"answers counted from {book.answers_since}")
    for part in book.parts:
        typer.echo(f"  {part.facility}/{part.item}: line {part.line:.4g} ({part.bound}: {part.reason})")
    if not book.parts:
        typer.echo("  every part at its trained line")


def history(lines: Path = LINES_OPTION) -> None:
    """Every version of the book, oldest first."""
    from service.line_book_file import read_history, read_line_book

    current = read_line_book(lines)
    for book in read_history(lines):
        raised = sum(1 for p in book.parts if p.line > 1.0)
        mark = "*" if book.version == current.version else " "
        typer.echo(f"{mark} version {book.version} {book.created_at} store {book.model_version}: {raised} parts raised; "
                   f"{book.change}")


def revert(lines: Path = LINES_OPTION,
           to: int | None = typer.Option(None, help="Version to serve again (default: the one before the current; "
                                         "0: every part at its trained line)."),
           reason: str = typer.Option("", help="Why (kept in the book and its log).")) -> None:
    """Serve an earlier version's lines again, as a new version; earlier answers stop counting."""
    from model_store.serving.line_book import LineBook, PartLine
    from service.line_book_file import publish, read_history, read_line_book

    current = read_line_book(lines)
    versions = {b.version: b for b in read_history(lines)}
    target = current.version - 1 if to is None else to
    if target < 0 or (target > 0 and target not in versions):
        known = ", ".join(str(v) for v in sorted(versions)) or "none"
        raise DataError(f"{lines}: no version {target} to revert to (kept: 0, {known})")
    old = versions.get(target)
    parts = tuple(PartLine(p.facility, p.item, p.line, "revert", f"reverted to version {target}: {p.reason}"[:500],
                           p.false_alarms, p.alarmed_defects, p.defects) for p in (old.parts if old else ()))
    version = max([current.version, *versions]) + 1
    book = LineBook(version, old.model_version if old else current.model_version, _now(),
                    f"revert to version {target}" + (f": {reason}" if reason else ""), current.bounds, parts, _now())
    publish(lines, book)
    typer.echo(f"version {version}: the lines of version {target} ({len(parts)} parts raised); answers before now no "
               f"longer count")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def register(app: typer.Typer) -> None:
    """Add ``lines`` to a CLI app (called by service.cli)."""
    lines_app.command(name="update")(user_errors(update))
    lines_app.command(name="show")(user_errors(show))
    lines_app.command(name="history")(user_errors(history))
    lines_app.command(name="revert")(user_errors(revert))
    app.add_typer(lines_app, name="lines")


__all__ = ["register", "update", "show", "history", "revert"]
