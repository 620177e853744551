"""``moldwatch recipe``: the best setting per facility and item, as CSV, JSON, HTML and MongoDB.

A thin adapter: read the inputs, :func:`model_store.recipe.compute_recipes`, write atomically,
optionally upsert into MongoDB. ``service/cli.py`` calls :func:`register` with its ``app``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from model_store.errors import DataError, MoldwatchError
from service.cli_errors import console, require_train_extra, user_errors

if TYPE_CHECKING:
    import pandas as pd

    from model_store.serving.store import StoreManifest


def _read_records(records: str, query: str | None, manifest: StoreManifest) -> pd.DataFrame:
    from model_store.canonical import canonical_records
    from model_store.loaders import read_table

    frame = read_table(records, query)
    try:
        return canonical_records(frame, manifest.schema, source=str(records))
    except DataError as exc:
        if "missing column" in str(exc):
            raise DataError(f"records do not match the store's plant schema ({manifest.schema.name}): {exc}") from None
        raise


def _list_recipe_settings(value: bool) -> None:
    if value:
        from model_store.recipe import RecipeConfig
        from service.set_option_help import listing

        typer.echo(listing(RecipeConfig()))
        raise typer.Exit(0)


def recipe(
    store: Path = typer.Option(..., help="Model store directory (its models pseudo-label the history)."),
    records: str = typer.Option(..., help="Production history: .csv, .parquet, or a postgresql:// URI."),
    out: Path = typer.Option(..., help="Directory to write recipes.json, recipes.csv, clusters.csv and report.html (replaced atomically)."),
    lots: str | None = typer.Option(None, help="Daily lots (.csv, .parquet or postgresql://): adds the actual defect rates."),
    schema: Path | None = typer.Option(None, help="The records' plant schema: refused unless it is the store's."),
    records_query: str | None = typer.Option(None, help="PostgreSQL: table name or SELECT for records."),
    lots_query: str | None = typer.Option(None, help="PostgreSQL: table name or SELECT for lots."),
    mongo_uri: str | None = typer.Option(None, help="Also upsert the recipes into MongoDB (one document per facility/item)."),
    mongo_db: str = typer.Option("moldwatch", help="MongoDB database for --mongo-uri."),
    mongo_collection: str = typer.Option("recipes", help="MongoDB collection for --mongo-uri."),
    set_: list[str] = typer.Option([], "--set", metavar="NAME=VALUE",
                                   help="Override a recipe setting: name=value, e.g. confidence=0.9 (names: --list-settings)."),
    list_settings: bool = typer.Option(False, "--list-settings", is_eager=True, expose_value=False, callback=_list_recipe_settings,
                                       help="Print every --set name with its default and meaning, and exit."),
) -> None:
    """Recommend the best setting per facility/item from the pseudo-labelled history, with its operating window."""
    require_train_extra("recipe", ("scipy", "matplotlib"))  # intervals, the HTML report
    from model_store.canonical import canonical_lots
    from model_store.loaders import read_table
    from model_store.lots import repeated_lots_warning
    from model_store.recipe import RecipeConfig, compute_recipes
    from model_store.recipe.output import check_target, write_recipes
    from model_store.schema import load_schema
    from model_store.serving.store import open_store
    from service.progress import progress_bar
    from service.set_option_help import check_names, names, parse_sets

    overrides = parse_sets(set_)
    check_names({k.removeprefix("recipe."): v for k, v in overrides.items()}, names(RecipeConfig()), "recipe")
    try:
        config = RecipeConfig().with_overrides(overrides)
    except (ValueError, TypeError) as exc:
        raise MoldwatchError(f"--set: {exc}") from None
    check_target(out.resolve())
    if mongo_uri:
        from model_store.recipe.mongo import check_reachable

        check_reachable(mongo_uri)
    manifest = open_store(store)
    schema_hash = load_schema(schema).hash() if schema is not None else manifest.schema_hash
    if schema_hash != manifest.schema_hash:
        raise DataError(
            f"{schema}: this plant schema is not the one the store {store} was trained with "
            f"(hash {schema_hash} vs {manifest.schema_hash}); use the store's schema or retrain"
        )
    with console.status("Reading records and lots..."):
        frame = _read_records(records, records_query, manifest)
        lot_frame = canonical_lots(read_table(lots, lots_query), manifest.schema, source=str(lots)) if lots else None
    console.print(f"Read {len(frame):,} records"
                  + (f" and {len(lot_frame):,} lots." if lot_frame is not None else " (no lots: pseudo-labels only)."))
    repeated = repeated_lots_warning(lot_frame) if lot_frame is not None else None
    if repeated:
        console.print(f"[yellow]warning:[/] {repeated}", highlight=False, soft_wrap=True)
    with progress_bar(console) as progress:
        result = compute_recipes(frame, lot_frame, manifest, config, progress=progress)

    published: dict[str, int] = {}

    def publish(_: Path) -> None:
        from model_store.recipe.mongo import publish as upsert

        published.update(upsert(mongo_uri, result.recipes, result.model_version, mongo_db, mongo_collection))

    with console.status("Writing recipes and report..."):
        target = write_recipes(result, out, before_commit=publish if mongo_uri else None)
    for line in result.warnings:
        console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
    for kept in result.kept:
        console.print(f"{kept['facility']}/{kept['item']}: keep current practice ({kept['reason']})", highlight=False, soft_wrap=True)
    keep = f", {len(result.kept)} keep current practice" if result.kept else ""
    console.print(f"{len(result.recipes)} facility/item recipes{keep} from {result.records:,} records "
                  f"(store {result.model_version}) -> {target}", highlight=False, soft_wrap=True)
    if mongo_uri:
        console.print(
            f"MongoDB {mongo_db}.{mongo_collection}: {published.get('upserted', 0)} inserted, "
            f"{published.get('modified', 0)} updated, {published.get('pruned', 0)} stale removed"
        )


def register(app: typer.Typer) -> None:
    """Add ``recipe`` to a CLI app (called by service.cli)."""
    app.command(name="recipe")(user_errors(recipe))
