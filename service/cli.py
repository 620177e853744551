"""``moldwatch``: one console script for the offline pipeline, the worker and the demo.

Every command exits non-zero with a one-line reason on bad input (``error: ...`` on stderr).
"""
from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import typer

from model_store.errors import MoldwatchError
from service import demo, lines_command, recipe_command, run_command, store_command, token_command
from service.cli_errors import INSTALL_TRAIN, TRAIN_EXTRA, console, require_train_extra, say_error, user_errors


class _App(typer.Typer):
    """The CLI app; a usage mistake (missing option, bad value) ends like every other failure:
    one ``error: ...`` line on stderr and exit code 2."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:  # typer >= 0.20 vendors click; older ones use click itself
            from typer._click import exceptions as errors
        except ImportError:  # pragma: no cover
            from click import exceptions as errors  # type: ignore[no-redef]  # the same module where typer does not vendor it

        try:
            result = super().__call__(*args, standalone_mode=False, **kwargs)
        except errors.NoArgsIsHelpError as exc:  # bare `moldwatch`: the help, as a request for it
            typer.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            sys.exit(0)
        except errors.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "moldwatch"
            say_error(f"{exc.format_message().rstrip('.')} (see: {where} --help)")
            sys.exit(2)
        except errors.ClickException as exc:
            say_error(exc.format_message())
            sys.exit(2)
        except typer.Abort:
            say_error("interrupted")
            sys.exit(130)
        except ModuleNotFoundError as exc:  # a lazy import the commands' own checks did not foresee
            if (exc.name or "").partition(".")[0] not in TRAIN_EXTRA:
                raise
            say_error(f"{exc.name} is not installed; this needs the train extra: {INSTALL_TRAIN}")
            sys.exit(2)
        sys.exit(result if isinstance(result, int) else 0)


app = _App(
    name="moldwatch",
    help="Catch defective injection-molding shots as they happen, and recommend the settings that make good parts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: rich's option tables truncate long option and environment-variable names
    # ("--mongo-checkpoint-col…") at 80 columns; click wraps the text and never cuts a name.
    rich_markup_mode=None,
)


def _list_training_settings(value: bool) -> None:
    """``train --list-settings``: print every --set name with its default and meaning, then exit."""
    if value:
        from model_store.config import TrainingConfig
        from service.set_option_help import listing

        typer.echo(listing(TrainingConfig()))
        raise typer.Exit(0)


def simulate(
    out: Path = typer.Option(..., "--out", help="Directory to write records, lots, schema and truth/ into."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives the same plant."),
    days: int = typer.Option(30, help="Production days."),
    facilities: int = typer.Option(24, help="Machines (each belongs to one maker)."),
    items: int = typer.Option(48, help="Distinct molded items."),
    shots: int = typer.Option(500_000, help="Approximate total shots."),
    missing_rate: float = typer.Option(0.01, help="Share of numeric values left blank."),
    fmt: str = typer.Option("parquet", "--format", help="Records format: parquet or csv (one file), or parquet-dataset "
                            "(a hive-partitioned folder records/, generated and written piece by piece in bounded memory)."),
    chunk_shots: int = typer.Option(250_000, help="parquet-dataset: shots generated at a time (never more than one "
                                    "lot day; memory is about 1.8 kB per shot of a piece). The data depend on it."),
    partition_by: str = typer.Option("lot_date", help="parquet-dataset: partition folders, lot_date, facility or "
                                     "lot_date,facility (each file still holds whole records)."),
) -> None:
    """Simulate a plant: records, daily lots, the plant schema and (for evaluation) ground truth."""
    require_train_extra("simulate", ("pyarrow",))  # the ground truth is always Parquet
    from model_store.simulate import SimulationConfig, write_plant
    from model_store.simulate import simulate as run_simulation

    if fmt not in ("parquet", "csv", "parquet-dataset"):
        raise MoldwatchError(f"--format {fmt!r}: expected parquet, csv or parquet-dataset")
    from model_store.store import not_a_folder

    problem = not_a_folder(out)
    if problem:
        raise MoldwatchError(f"--out {out}: {problem}; choose a directory for the plant")
    started = time.perf_counter()
    config = SimulationConfig(seed=seed, days=days, facilities=facilities, items=items, shots=shots, missing_rate=missing_rate)
    if fmt == "parquet-dataset":
        _simulate_dataset(config, out, chunk_shots, partition_by, started)
        return
    with console.status("Simulating the plant..."):
        plant = run_simulation(config)
        paths = write_plant(plant, out, fmt=fmt)
    console.print(
        f"Simulated {len(plant.records):,} shots, {len(plant.lots):,} lots, {plant.records['facility'].nunique()} facilities, "
        f"{plant.records['item'].nunique()} items in {time.perf_counter() - started:.1f} s -> {out}"
    )
    for role, path in paths.items():
        console.print(f"  {role:<10} {path}")


def _simulate_dataset(config: Any, out: Path, chunk_shots: int, partition_by: str, started: float) -> None:
    """``simulate --format parquet-dataset``: the plant piece by piece, each piece written and dropped."""
    from model_store.simulate import PlantStream, write_plant_dataset
    from model_store.simulate.writer import check_partitioning
    from service.progress import progress_bar

    keys = check_partitioning([k.strip() for k in partition_by.split(",") if k.strip()])
    stream = PlantStream(config, chunk_shots=chunk_shots)
    with progress_bar(console) as progress:
        paths = write_plant_dataset(stream, out, keys, progress=lambda done, total: progress("simulate", done, total))
    console.print(f"Simulated {stream.total_shots:,} shots in {len(stream.plans):,} pieces, {config.facilities} facilities, "
                  f"in {time.perf_counter() - started:.1f} s -> {out}")
    for role, path in paths.items():
        console.print(f"  {role:<10} {path}")


def train(
    schema: Path = typer.Option(..., help="Plant schema file (YAML or TOML)."),
    records: str = typer.Option(..., help="Records: .csv, .parquet, or a postgresql:// URI."),
    lots: str = typer.Option(..., help="Daily lots: .csv, .parquet, or a postgresql:// URI."),
    store: Path = typer.Option(..., help="Model store directory to write (replaced atomically)."),
    records_query: str | None = typer.Option(None, help="PostgreSQL: table name or SELECT for records."),
    lots_query: str | None = typer.Option(None, help="PostgreSQL: table name or SELECT for lots."),
    workers: int = typer.Option(0, help="Parallel training processes (0 = one per core)."),
    cluster: str | None = typer.Option(None, help="Fit the groups and makers' units as Dask tasks: a running scheduler "
                                       "(tcp://host:8786) or local:N (N worker processes here). Needs the cluster extra."),
    cluster_memory: str = typer.Option("4GB", help="Memory limit of each local:N worker (Dask restarts one past it and "
                                       "retries its fits elsewhere)."),
    feedback: Path | None = typer.Option(None, help="Operator feedback kept by the worker (JSON lines, as on "
                                         "kafka_feedback_topic): shots whose latest answer is 'defect' are left out."),
    max_rows: int = typer.Option(400_000, help="Records trained on at most (training holds 10 GB and more per million): "
                                 "a longer history is read in pieces and whole lots are kept, the same share of every "
                                 "part's days. 0: no cap (the whole history in memory)."),
    set_: list[str] = typer.Option([], "--set", metavar="NAME=VALUE", help="Override a setting: section.name=value, "
                                   "e.g. grouping.min_group_rows=300 (names: --list-settings)."),
    list_settings: bool = typer.Option(False, "--list-settings", is_eager=True, expose_value=False, callback=_list_training_settings,
                                       help="Print every --set name with its default and meaning, and exit."),
) -> None:
    """Train per-group models (IsolationForest / AutoEncoder / MemAE) into a model store, with an HTML report."""
    require_train_extra("train")
    from model_store.canonical import canonical_lots
    from model_store.config import TrainingConfig
    from model_store.dispatch import check_cluster, open_dispatcher
    from model_store.history_sample import read_history
    from model_store.loaders import read_table
    from model_store.schema import load_schema
    from model_store.store_training import train_store
    from service.progress import progress_bar
    from service.set_option_help import check_names, names, parse_sets

    overrides = parse_sets(set_)
    check_names(overrides, names(TrainingConfig()), "train")
    if cluster is not None:  # before the long read of the history: a missing Dask or a bad value is one line now
        check_cluster(cluster)
    from model_store.store import check_store_target

    check_store_target(store)  # a store that cannot be written is one line now, not after the training
    plant = load_schema(schema)
    if workers:
        overrides["workers"] = str(workers)
    try:
        config = TrainingConfig().with_overrides(overrides)
    except (ValueError, TypeError) as exc:
        raise MoldwatchError(f"--set: {exc}") from None
    defects: set[str] = set()
    if feedback is not None:  # read first: a bad feedback file fails before the long read of the history
        from service.feedback import confirmed_defects, read_answers

        with open(feedback, encoding="utf-8", errors="replace") as lines:
            defects = confirmed_defects(read_answers(lines, str(feedback)))
    if max_rows < 0:
        raise MoldwatchError(f"--max-rows must be 0 (no cap) or a number of records, got {max_rows}")
    with console.status("Reading records and lots...") as status:
        def reading(stage: str, done: int, total: int | None) -> None:
            status.update(f"Reading records: {stage}, {done:,}" + (f" of {total:,}" if total else "") + " rows...")

        frame, sample = read_history(records, records_query, plant, max_rows, progress=reading)
        lot_frame = canonical_lots(read_table(lots, lots_query), plant, source=str(lots))
    console.print(f"Read {len(frame):,} records and {len(lot_frame):,} lots.")
    if sample.sampled:
        console.print(sample.describe(), highlight=False, soft_wrap=True)
    if plant.label and "label" not in frame.columns:
        console.print(f"[yellow]warning:[/] schema {plant.source} names {plant.label!r} as the label column, and {records} "
                      f"has no such column: nothing to evaluate against (training never reads labels; remove 'label:' "
                      f"from the schema or check the column's name).", highlight=False, soft_wrap=True)
    frame = _without_repeated_records(frame)
    _print_lot_coverage(frame, lot_frame)
    if feedback is not None:
        confirmed = frame["record_id"].astype(str).isin(defects)
        frame = frame[~confirmed].reset_index(drop=True)
        console.print(f"Left out {int(confirmed.sum()):,} shots operators confirmed as defects ({len(defects):,} in "
                      f"{feedback}; the others are not in these records).")
    from model_store.models.quiet import ignore_benign_numpy_warnings

    ignore_benign_numpy_warnings()
    with open_dispatcher(cluster, config.workers, cluster_memory) as dispatcher, \
            progress_bar(console) as progress:
        if cluster is not None:
            console.print(f"Fitting on the {dispatcher.description}.")
        manifest = train_store(frame, lot_frame, plant, store, config, progress=progress, dispatcher=dispatcher,
                               history_sample=sample.to_json())
    kinds: dict[str, int] = {}
    for entry in manifest["groups"]:
        kinds[entry["model_kind"]] = kinds.get(entry["model_kind"], 0) + 1
    console.print(
        f"Store {store} version {manifest['model_version']}: {len(manifest['groups'])} groups "
        f"({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}) in {manifest['training']['seconds']:.0f} s. "
        f"Report: {store / 'report.html'}"
    )


def _without_repeated_records(frame: Any) -> Any:
    """The history with each exactly repeated row once (an export run twice over one window would
    otherwise weigh those shots double); a record id reused by different shots is kept and named."""
    from model_store.canonical import repeated_records

    kept, repeated, reused = repeated_records(frame)
    if repeated:
        console.print(f"[yellow]warning:[/] left out {repeated:,} rows that repeat an earlier row exactly (same record id "
                      f"and values).", highlight=False, soft_wrap=True)
    if reused:
        example = ", ".join(repr(v) for v in reused[:3])
        console.print(f"[yellow]warning:[/] {len(reused):,} record ids name more than one shot (e.g. {example}); record "
                      f"ids should be unique per shot: verdicts for these shots cannot be told apart.",
                      highlight=False, soft_wrap=True)
    return kept


LOT_COVERAGE_WARNING = 0.9  # share of records with their lot below which train warns


def _print_lot_coverage(records: Any, lots: Any) -> None:
    """How many lots match records: lots of other days or other machine names are otherwise silent."""
    from model_store.lots import lot_coverage, repeated_lots_warning

    repeated = repeated_lots_warning(lots)
    if repeated:
        console.print(f"[yellow]warning:[/] {repeated}", highlight=False, soft_wrap=True)
    matched, total, share = lot_coverage(records, lots)
    if share >= LOT_COVERAGE_WARNING:  # a lots file longer than the records' window is normal
        return
    console.print(f"[yellow]warning:[/] only {share:.0%} of the records have their lot ({matched:,} of the {total:,} lots "
                  f"match a record's facility, item and lot date). Records without a lot count for no group's defect "
                  f"rate: check that both files name the machines, parts and days alike.", highlight=False, soft_wrap=True)


def _stdin_records(stream: Any, schema: Any, refused: list[Any] | None = None) -> Any:
    """JSON lines read by the rule the worker and ``POST /score`` read documents with (a missing
    production field is a gap to impute, not a missing column); the first refused line stops
    with its number and reason, or with ``refused`` (a list) each refused record is appended to
    it (its line, id, reason and error) and the others are read (an error when none is left)."""
    from rich.markup import escape

    from service.decode import RecordDecoder, UnknownFields, unknown_field_text

    documents, numbers = _json_lines(stream)
    for name, resembles in UnknownFields(schema).observe(documents):
        console.print(f"[yellow]warning:[/] {escape(unknown_field_text(name, resembles))}", highlight=False, soft_wrap=True)
    decoded = RecordDecoder(schema).decode_batch(documents)
    if decoded.dead_letters and (refused is None or len(decoded.dead_letters) == len(documents)):
        k = min(decoded.dead_letters)
        every = f" (and every other record: {len(documents):,} refused)" if refused is not None and len(documents) > 1 else ""
        raise MoldwatchError(f"stdin line {numbers[k]}: {decoded.dead_letters[k].error}{every}")
    if decoded.dead_letters and refused is not None:
        from model_store.canonical import RefusedRow, quoted_id

        for k in sorted(decoded.dead_letters):
            letter = decoded.dead_letters[k]
            document = documents[k]
            record_id = quoted_id(document.get(schema.record_id)) if isinstance(document, dict) else None
            refused.append(RefusedRow(numbers[k], record_id, letter.reason, f"stdin line {numbers[k]}: {letter.error}"))
    return decoded.frame


def _json_lines(stream: Any) -> tuple[list[dict[str, Any]], list[int]]:
    """Records as JSON objects one after the other: JSON lines, pretty-printed objects, or arrays
    of objects (as an API client or ``jq`` writes them), each with the line it starts on."""
    text = stream.read()
    decoder = json.JSONDecoder()
    rows: list[dict[str, Any]] = []
    numbers: list[int] = []
    pos, line, counted = 0, 1, 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos >= len(text):
            break
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise MoldwatchError(f"stdin line {exc.lineno}: not JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise MoldwatchError(f"stdin line {line}: JSON nested too deep for a record") from None
        values = value if isinstance(value, list) else [value]
        for row in values:
            if not isinstance(row, dict):
                raise MoldwatchError(f"stdin line {line}: expected a JSON object (one record), got {type(row).__name__}")
            rows.append(row)
            numbers.append(line)
    if not rows:
        raise MoldwatchError("stdin: no records; expected JSON objects, one record each (JSON lines, or pretty-printed)")
    return rows, numbers


def score(
    store: Path = typer.Option(..., help="Model store directory."),
    records: str = typer.Option(..., help="Records: .csv, .parquet, a postgresql:// URI, or - for JSON records on stdin "
                                "(JSON lines, pretty-printed objects or an array; the plant's own field names, as for POST /score)."),
    out: Path = typer.Option(..., help="Verdicts file to write (JSON lines); - for stdout."),
    records_query: str | None = typer.Option(None, help="PostgreSQL: table name or SELECT for records."),
    batch: int = typer.Option(50_000, min=1, help="Records per scoring batch."),
    lines: Path | None = typer.Option(None, help="Feedback lines: the line book 'moldwatch lines update' writes "
                                      "(as the worker's --lines); judges each part at its line."),
    refused_out: Path | None = typer.Option(None, "--refused", help="Where records the schema's rules refuse are "
                                            "written (JSON lines: row, record_id, reason, error); default OUT.refused.jsonl "
                                            "beside --out, or stderr with --out -."),
    strict: bool = typer.Option(False, "--strict", help="Refuse the whole input at its first bad record (as train does) "
                                "instead of scoring the others."),
) -> None:
    """Score records with a store; write one verdict per record (JSON lines). A record the schema's
    rules refuse (a timestamp that is not one, text in a numeric field) gets no verdict: it is
    written to the refused file with its row and reason, and the others are scored."""
    from model_store.canonical import canonical_records
    from model_store.loaders import is_postgres, read_table
    from model_store.serving.line_book import judge_with_book
    from model_store.serving.scoring import ScoringEngine
    from model_store.serving.store import open_store
    from model_store.serving.verdict import to_verdicts
    from service.line_book_file import read_line_book
    from service.progress import progress_bar

    source = Path(records)
    if records != "-" and not is_postgres(records) and (source.is_dir() or source.suffix.lower() in (".parquet", ".pq")):
        require_train_extra("score on Parquet", ("pyarrow",))
    if str(out) != "-" and out.is_dir():
        raise MoldwatchError(f"--out {out}: is a directory; give the verdicts file's name (e.g. {out / 'verdicts.jsonl'})")
    if refused_out is not None and refused_out.is_dir():
        raise MoldwatchError(f"--refused {refused_out}: is a directory; give a file's name (e.g. {refused_out / 'refused.jsonl'})")
    manifest = open_store(store)
    engine = ScoringEngine(manifest)
    book = read_line_book(lines) if lines is not None else None
    if book is not None and book.version > 0 and book.model_version != engine.model_version:
        console.print(f"[yellow]warning:[/] {lines} holds lines for store {book.model_version}, not {engine.model_version}: "
                      f"every part is judged at its trained line ('moldwatch lines update' for this store)")
    refused: list[Any] | None = None if strict else []
    if records == "-":
        frame = _stdin_records(sys.stdin, manifest.schema, refused)
    else:
        frame = canonical_records(read_table(records, records_query), manifest.schema, source=str(records), refused=refused)
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    to_stdout = str(out) == "-"
    if not to_stdout:
        out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    counts = {"anomaly": 0, "unscorable": 0}
    memory: dict = {}
    try:
        with progress_bar(console) as progress, \
                (nullcontext(sys.stdout) if to_stdout else open(tmp, "w", encoding="utf-8")) as fh:
            for start in range(0, len(frame), batch):
                chunk = frame.iloc[start : start + batch]
                scored = engine.score(chunk, memory=memory)
                judge_with_book(scored, book, engine.model_version)
                for verdict in to_verdicts(chunk, scored, engine.model_version):
                    fh.write(json.dumps(verdict, separators=(",", ":")) + "\n")
                counts["anomaly"] += int(scored.anomaly.sum())
                counts["unscorable"] += int((scored.resolution == "unscorable").sum())
                progress("score", min(start + batch, len(frame)), len(frame))
        if not to_stdout:
            tmp.replace(out)
        _write_refused(refused or [], refused_out, None if to_stdout else out)
    finally:
        if not to_stdout:
            tmp.unlink(missing_ok=True)  # a failed run leaves no half-written file beside --out
    console.print(
        f"Scored {len(frame):,} record{'' if len(frame) == 1 else 's'}: {counts['anomaly']:,} anomalies "
        f"({counts['anomaly'] / len(frame):.2%}), "
        f"{counts['unscorable']:,} unscorable -> {'stdout' if to_stdout else out}"
        + (f"; {len(refused):,} refused" if refused else ""), highlight=False, soft_wrap=True,
    )


def refused_path(out: Path) -> Path:
    """Where ``score --out OUT`` writes the records it refuses unless told (``--refused``)."""
    return out.with_name(out.name + ".refused.jsonl")


def _write_refused(refused: list[Any], target: Path | None, out: Path | None) -> None:
    """The refused records as JSON lines (to ``target``, else beside ``out``, else stderr), and
    one warning naming the first. A ``target`` is always written (empty when none is refused);
    beside ``out`` a file of an earlier run is removed when none is refused now (it would
    describe records this run scored)."""
    from rich.markup import escape

    path = target if target is not None else (refused_path(out) if out is not None else None)
    lines = [json.dumps(r.to_json(), ensure_ascii=False, separators=(",", ":")) for r in refused]
    to_file = path is not None and str(path) != "-"
    if to_file and path is not None and (refused or target is not None):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        partial.replace(path)
    if not refused:
        if target is None and path is not None:
            path.unlink(missing_ok=True)
        return
    if to_file:
        where = str(path)
    else:
        for line in lines:
            print(line, file=sys.stderr)
        where = "stderr"
    console.print(f"[yellow]warning:[/] {len(refused):,} record{'' if len(refused) == 1 else 's'} refused, no verdict "
                  f"(first: {escape(refused[0].error)}) -> {escape(where)}; fix them at the source and score them again, "
                  f"or --strict to refuse the whole input", highlight=False, soft_wrap=True)


def register_commands(app: typer.Typer) -> None:
    """Every command, added by an explicit call (no module registers itself on import). The order
    is the order of ``--help``, where typer lists single commands before command groups."""
    app.command()(user_errors(simulate))
    app.command()(user_errors(train))
    app.command()(user_errors(score))
    run_command.register(app)
    demo.register(app)
    recipe_command.register(app)
    token_command.register(app)
    store_command.register(app)
    lines_command.register(app)


register_commands(app)
