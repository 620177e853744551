"""``moldwatch store`` (list, promote, rollback) and ``moldwatch canary``: changing the served store.

A worker serves whatever valid store sits at its ``--store`` path and hot-reloads it when it
changes; these commands are the only way that path should change once a plant is live:

    moldwatch canary --store S --candidate C --records R --lots L [--feedback F] --promote
        both stores judge the recent records; the candidate replaces the served store only when
        the canary rule holds (model_store/canary.py); exit 0 promoted (or would be, without
        --promote), 3 refused (reasons printed and logged), 4 not enough evidence yet
    moldwatch store promote C --store S     serve C now (no canary: e.g. the first store)
    moldwatch store rollback --store S [--to VERSION]
    moldwatch store list --store S          served version, kept versions, the log's last lines
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import typer

from service.cli_errors import console, require_train_extra, user_errors

store_app = typer.Typer(help="The served model store: list its kept versions, promote a new one, roll back.",
                        no_args_is_help=True)

STORE_OPTION = typer.Option(..., "--store", help="The served model store directory (the worker's --store).")
EXIT_REFUSED, EXIT_WAIT = 3, 4


def list_store(store: Path = STORE_OPTION, lines: int = typer.Option(10, help="Log lines to show.")) -> None:
    """The served store's version, the kept ones (newest first) and the last promotions and rollbacks."""
    from model_store.generations import list_generations, read_log
    from model_store.serving.store import open_store

    served = open_store(store, verify=False)
    typer.echo(f"served: {served.model_version} ({store})")
    for generation in list_generations(store):
        typer.echo(f"kept:   {generation.model_version} ({generation.path})")
    for event in read_log(store)[-lines:]:
        typer.echo(f"log:    {event['at']} {event['event']} {event.get('model_version')} by {event.get('by')}"
                   + (f" (replaced {event['replaced']})" if event.get("replaced") else "")
                   + (f": {event['reason']}" if event.get("reason") else ""))


def promote_store(candidate: Path = typer.Argument(..., help="The candidate store directory (moved into place)."),
                  store: Path = STORE_OPTION,
                  reason: str = typer.Option("", help="Why (kept in the log)."),
                  keep: int = typer.Option(5, help="Replaced stores kept for rollback.")) -> None:
    """Serve CANDIDATE at --store now (verified first; the replaced store is kept)."""
    from model_store.generations import promote

    kept = promote(store, candidate, reason=reason, keep=keep)
    typer.echo(f"promoted: {store} now serves the candidate"
               + (f"; {kept.model_version} kept at {kept.path} ('moldwatch store rollback --store {store}')" if kept else ""))


def rollback_store(store: Path = STORE_OPTION,
                   to: str | None = typer.Option(None, help="Model version to serve again (default: the newest kept)."),
                   reason: str = typer.Option("", help="Why (kept in the log).")) -> None:
    """Serve the newest kept store (or --to VERSION) again; the one it replaces is kept."""
    from model_store.generations import rollback

    version = rollback(store, to=to, reason=reason)
    typer.echo(f"rolled back: {store} serves {version} again")


def canary(store: Path = STORE_OPTION,
           candidate: Path = typer.Option(..., help="The retrained candidate store directory."),
           schema: Path | None = typer.Option(None, help="Plant schema (default: the served store's)."),
           records: str = typer.Option(..., help="Recent records both stores judge: .csv, .parquet, or postgresql://."),
           lots: str = typer.Option(..., help="Daily lots covering them: .csv, .parquet, or postgresql://."),
           records_query: str | None = typer.Option(None, help="PostgreSQL: table name or SELECT for records."),
           lots_query: str | None = typer.Option(None, help="PostgreSQL: table name or SELECT for lots."),
           feedback: Path | None = typer.Option(None, help="Operator feedback (JSON lines, as on kafka_feedback_topic)."),
           since: str | None = typer.Option(None, help="Only records at or after this time (ISO 8601), e.g. since the "
                                            "candidate's training data ends."),
           promote_now: bool = typer.Option(False, "--promote", help="Promote the candidate when the rule holds."),
           report: Path | None = typer.Option(None, help="Write the comparison as JSON here."),
           ) -> None:
    """Judge the candidate beside the served store on recent records, lots and feedback; promote it
    only when it is not worse (exit 0), else refuse with the reasons (3) or wait for evidence (4)."""
    import pandas as pd

    from model_store.canary import CanaryRule, decide, judge_window
    from model_store.canonical import canonical_lots, canonical_records
    from model_store.generations import promote, record_refusal
    from model_store.loaders import read_table
    from model_store.schema import load_schema
    from model_store.serving.scoring import ScoringEngine
    from model_store.serving.store import open_store
    from service.feedback import latest_labels, read_answers

    served, new = open_store(store), open_store(candidate)
    if served.schema_hash != new.schema_hash:
        from model_store.errors import StoreError

        raise StoreError(f"{candidate}: the candidate is for another plant schema than {store}; a canary compares "
                         "stores of one plant")
    plant = load_schema(schema) if schema is not None else served.schema
    answers: dict[str, str] = {}
    if feedback is not None:
        with open(feedback, encoding="utf-8", errors="replace") as lines:
            answers = latest_labels(read_answers(lines, str(feedback)))
    with console.status("Reading records and lots..."):
        frame = canonical_records(read_table(records, records_query), plant, source=str(records))
        lot_frame = canonical_lots(read_table(lots, lots_query), plant, source=str(lots))
    if since is not None:
        try:
            start = pd.Timestamp(since)
        except ValueError:
            from model_store.errors import DataError

            raise DataError(f"--since: {since!r} is not a time; expected ISO 8601 such as 2026-03-01T00:00") from None
        when = pd.to_datetime(frame["timestamp"])
        if when.dt.tz is not None and start.tzinfo is None:
            start = start.tz_localize("UTC")
        frame = frame[when >= start]
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    with console.status(f"Judging {len(frame):,} records with both stores..."):
        judged = {"served": judge_window(ScoringEngine(served), frame, lot_frame, answers),
                  "candidate": judge_window(ScoringEngine(new), frame, lot_frame, answers)}
    verdict = decide(judged["served"], judged["candidate"], CanaryRule())
    payload = {"served": {"model_version": served.model_version, **judged["served"].describe()},
               "candidate": {"model_version": new.model_version, **judged["candidate"].describe()},
               "records": len(frame), **verdict.describe()}
    if report is not None:
        report.write_text(json.dumps(payload, indent=1) + "\n")
    for name in ("served", "candidate"):
        d = payload[name]
        typer.echo(f"{name:<9} {d['model_version']}: {d['alarms_in_lots']} alarms for {d['bad_in_lots']:.0f} bad shots "
                   f"(ratio {d['alarm_to_bad_ratio']}), lot rank correlation {d['lot_rank_correlation']}, feedback "
                   f"precision {d['feedback_precision']} recall {d['feedback_recall']}, unscorable {d['unscorable_share']:.1%}")
    for reason in verdict.reasons:
        typer.echo(f"{verdict.decision}: {reason}")
    if verdict.decision == "refuse":
        if promote_now:
            record_refusal(store, candidate, new.model_version, verdict.reasons)
        raise typer.Exit(EXIT_REFUSED)
    if verdict.decision == "wait":
        raise typer.Exit(EXIT_WAIT)
    if promote_now:
        kept = promote(store, candidate, reason="canary: " + "; ".join(verdict.reasons))
        typer.echo(f"promoted {new.model_version}" + (f"; {kept.model_version} kept for rollback" if kept else ""))


def register(app: typer.Typer) -> None:
    """Add ``store`` and ``canary`` to a CLI app (called by service.cli)."""
    store_app.command(name="list")(user_errors(list_store))
    store_app.command(name="promote")(user_errors(promote_store))
    store_app.command(name="rollback")(user_errors(rollback_store))
    app.add_typer(store_app, name="store")

    def canary_command(*args, **kwargs):  # type: ignore[no-untyped-def]  # canary's signature, through functools.wraps below
        require_train_extra("canary")
        return canary(*args, **kwargs)

    app.command(name="canary")(user_errors(functools.wraps(canary)(canary_command)))


__all__ = ["register", "list_store", "promote_store", "rollback_store", "canary"]
