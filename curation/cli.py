"""`curate`: run pipelines and inspect what they published. Every listing command takes --json."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from typing import Any

import click

from curation.errors import CurationError
from curation.store.catalog import Catalog
from curation.store.home import DEFAULT_HOME, Home


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _emit(data: Any, as_json: bool, render) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=_default, sort_keys=True))
    else:
        render(data)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[str(row.get(column, "")) if row.get(column) is not None else "" for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    click.echo("  ".join(column.upper().ljust(width) for column, width in zip(columns, widths)))
    for line in cells:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths)))


class Context:
    def __init__(self, home: str):
        self.home = Home(home)

    def reader(self) -> Catalog:
        return Catalog.open(self.home.catalog_path, read_only=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", envvar="CURATION_HOME", default=DEFAULT_HOME, show_default=True,
              help="Home directory: catalog, blobs, runs and (by default) published datasets.")  # fmt: skip
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, home: str, verbose: int) -> None:
    """Curate image pools into versioned, verifiable WebDataset datasets with provenance."""
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    ctx.obj = Context(home)


@cli.command("run")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--fresh", is_flag=True, help="Start a new run even if an unfinished run of this spec exists.")
@click.option("--ray-address", default=None, help="Join a Ray cluster (e.g. auto, ray://head:10001).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def run_command(obj: Context, spec_path: str, fresh: bool, ray_address: str | None, as_json: bool) -> None:
    """Run the pipeline in SPEC and publish NAME@vN. An unfinished run of the same spec is resumed."""
    from curation.config import load_spec
    from curation.core.pipeline import run_pipeline

    spec = load_spec(spec_path)
    result = run_pipeline(spec, home=obj.home, fresh=fresh, ray_address=ray_address, progress=not as_json)
    data = {"run_id": result.run_id, "version": result.version, "unchanged": result.unchanged,
            "resumed_blocks": result.resumed_blocks, "stats": result.stats}  # fmt: skip

    def render(data: dict) -> None:
        ingest = data["stats"]["ingest"]
        kept, rejected = data["stats"]["publish"]["samples"], ingest["inputs"] - ingest["kept"]
        if data["resumed_blocks"]:
            click.echo(f"resumed: {data['resumed_blocks']} block(s) were already done")
        click.echo(f"run {data['run_id']}: {ingest['inputs']} inputs this session, {rejected} rejected "
                   f"({ingest['inputs_per_s']} inputs/s)")  # fmt: skip
        embed = data["stats"].get("embed")
        if embed:
            click.echo(f"embedded {embed['embedded']} images with {embed['model_id']} "
                       f"({embed['cached_images']} already had vectors, {embed['failed']} failed)")  # fmt: skip
        verb = "unchanged, still" if data["unchanged"] else "published"
        click.echo(f"{verb} {data['version']} ({kept} samples in {data['stats']['publish']['shards']} shards)")
        click.echo(f"  curate verify {data['version']}   curate rejects {data['run_id']}")

    _emit(data, as_json, render)


@cli.command("runs")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def runs_command(obj: Context, as_json: bool) -> None:
    """List runs, newest first."""
    with obj.reader() as catalog:
        rows = catalog.rows(
            "SELECT run_id, name, status, version, started_at, finished_at FROM runs ORDER BY started_at DESC"
        )
    _emit(rows, as_json, lambda rows: _table(rows, ["run_id", "status", "version", "started_at"]))


@cli.command("versions")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def versions_command(obj: Context, name: str | None, as_json: bool) -> None:
    """List published versions (of NAME, or of every dataset)."""
    with obj.reader() as catalog:
        rows = catalog.versions(name)
    for row in rows:
        row["ref"] = f"{row['name']}@v{row['version']}"
    _emit(rows, as_json, lambda rows: _table(rows, ["ref", "samples", "status", "created_at", "uri"]))


@cli.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest.")
@click.pass_obj
def show_command(obj: Context, ref: str, as_json: bool) -> None:
    """Show a version's manifest summary."""
    from curation.api import open_version

    manifest = open_version(ref, home=obj.home.root).manifest

    def render(manifest: dict) -> None:
        parent = manifest["parent"]["ref"] if manifest["parent"] else "-"
        click.echo(f"{manifest['ref']}  created {manifest['created_at']}  parent {parent}  run {manifest['run_id']}")
        counts = manifest["counts"]
        click.echo(f"samples {counts['samples']} in {counts['shards']} shards; inputs {counts['inputs']}, "
                   f"kept {counts['kept_inputs']}, rejected {counts['rejected_inputs']}")  # fmt: skip
        click.echo(f"changes vs parent: +{manifest['changes']['added']} -{manifest['changes']['removed']}")
        for stage, reasons in manifest["dropped"].items():
            click.echo(f"dropped at {stage}: " + ", ".join(f"{reason} {count}" for reason, count in reasons.items()))
        click.echo(f"content sha256 {manifest['content_sha256']}")

    _emit(manifest, as_json, render)


@cli.command("verify")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def verify_command(obj: Context, ref: str, as_json: bool) -> None:
    """Re-hash every file of a version against its manifest; exits 1 on any mismatch."""
    from curation.api import open_version

    version = open_version(ref, home=obj.home.root)
    problems = version.verify()
    data = {
        "ref": version.ref,
        "ok": not problems,
        "files": len(version.manifest["files"]),
        "problems": problems,
    }

    def render(data: dict) -> None:
        for problem in data["problems"]:
            click.echo(f"MISMATCH {problem}", err=True)
        click.echo(f"{data['ref']}: " + ("OK, " if data["ok"] else "FAILED, ") + f"{data['files']} files checked")

    _emit(data, as_json, render)
    if problems:
        sys.exit(1)


@cli.command("diff")
@click.argument("first")
@click.argument("second")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def diff_command(obj: Context, first: str, second: str, as_json: bool) -> None:
    """Image ids added and removed going from version FIRST to version SECOND."""
    from curation.api import open_version

    before = set(open_version(first, home=obj.home.root).samples()["image_id"].to_pylist())
    after = set(open_version(second, home=obj.home.root).samples()["image_id"].to_pylist())
    data = {"from": first, "to": second, "added": sorted(after - before), "removed": sorted(before - after)}

    def render(data: dict) -> None:
        for image_id in data["added"]:
            click.echo(f"+ {image_id}")
        for image_id in data["removed"]:
            click.echo(f"- {image_id}")
        click.echo(f"{len(data['added'])} added, {len(data['removed'])} removed")

    _emit(data, as_json, render)


@cli.command("rejects")
@click.argument("run_id", metavar="RUN", default="latest")
@click.option("--json", "as_json", is_flag=True)
@click.option("--summary", is_flag=True, help="Counts per stage and reason only.")
@click.pass_obj
def rejects_command(obj: Context, run_id: str, as_json: bool, summary: bool) -> None:
    """What a run dropped and why (RUN: a run id, or 'latest')."""
    with obj.reader() as catalog:
        run_id = catalog.run(run_id)["run_id"]
        if summary:
            rows = catalog.rows(
                "SELECT stage, reason, count(*) AS inputs FROM outcomes WHERE run_id = ? AND status = 'rejected' "
                "GROUP BY ALL ORDER BY inputs DESC, reason",
                [run_id],
            )
            columns = ["stage", "reason", "inputs"]
        else:
            rows = catalog.rows(
                "SELECT source, uri, image_id, stage, reason, detail FROM outcomes "
                "WHERE run_id = ? AND status = 'rejected' ORDER BY source, uri",
                [run_id],
            )
            columns = ["source", "uri", "reason", "detail"]
    _emit(rows, as_json, lambda rows: _table(rows, columns))


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except CurationError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
