"""`curate`: run pipelines and inspect what they published. Every listing command takes --json."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from typing import Any

import click

from curation.errors import CurationError, VerifyError
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


def _echo_dropped(dropped: dict[str, dict[str, int]]) -> None:
    for stage, reasons in dropped.items():
        click.echo(f"dropped at {stage}: " + ", ".join(f"{reason} {count}" for reason, count in reasons.items()))


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
    from curation.api import run

    result = run(spec_path, home=obj.home.root, fresh=fresh, ray_address=ray_address, progress=not as_json)
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
        dedup = data["stats"].get("dedup")
        if dedup:
            click.echo(f"dedup: {dedup['dropped_images']} images dropped in {dedup['groups']} groups (largest "
                       f"{dedup['largest_group']})")  # fmt: skip
            if dedup.get("warning"):
                click.secho(f"WARNING {dedup['warning']}", fg="yellow", err=True)
        verb = "unchanged, still" if data["unchanged"] else "published"
        click.echo(f"{verb} {data['version']} ({kept} samples in {data['stats']['publish']['shards']} shards)")
        click.echo(f"  curate verify {data['version']}   curate rejects {data['run_id']}")

    _emit(data, as_json, render)


@cli.command("check")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def check_command(obj: Context, spec_path: str, as_json: bool) -> None:
    """Validate SPEC and show what a run would read and do, without running it (no Ray, no S3).

    Exit 0 when a run could start, 1 when it would fail on a listed error, 2 when the spec itself is invalid.
    """
    from curation.config import load_spec
    from curation.core.check import check_spec

    report = check_spec(load_spec(spec_path), obj.home)

    def render(data: dict) -> None:
        click.echo(f"{spec_path}: {data['name']}, a valid spec")
        click.echo("sources:")
        _table(data["sources"], ["name", "kind", "what"])
        click.echo("stages:")
        for stage in data["stages"]:
            click.echo(f"  {stage}")
        for warning in data["warnings"]:
            click.secho(f"warning: {warning}", fg="yellow", err=True)
        for error in data["errors"]:
            click.secho(f"error: {error}", fg="red", err=True)
        click.echo("a run could start" if data["ok"] else f"a run would fail: {len(data['errors'])} error(s)")

    _emit(report.as_dict(), as_json, render)
    if not report.ok:
        sys.exit(1)


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

    version = open_version(ref, home=obj.home.root)
    manifest = version.manifest
    has_report = any(item["path"] == "reports/selection.json" for item in manifest["files"])
    report = json.loads(version.root.get("reports/selection.json")) if has_report else None

    def render(manifest: dict) -> None:
        parent = manifest["parent"]["ref"] if manifest["parent"] else "-"
        click.echo(f"{manifest['ref']}  created {manifest['created_at']}  parent {parent}  run {manifest['run_id']}")
        counts = manifest["counts"]
        click.echo(f"samples {counts['samples']} in {counts['shards']} shards; inputs {counts['inputs']}, "
                   f"kept {counts['kept_inputs']}, rejected {counts['rejected_inputs']}")  # fmt: skip
        click.echo(f"changes vs parent: +{manifest['changes']['added']} -{manifest['changes']['removed']}")
        _echo_dropped(manifest["dropped"])
        if report:
            click.echo("samples by part: " + ", ".join(f"{k} {v}" for k, v in report["samples_by_part"].items()))
            for part, numbers in report["parts"].items():
                if "top_clusters" in numbers and not numbers["images_per_top_cluster_before"]:
                    click.echo(f"  {part}: 0 top clusters (its pool was empty)")
                elif "top_clusters" in numbers:
                    before, after = numbers["images_per_top_cluster_before"], numbers["selected_per_top_cluster"]
                    click.echo(f"  {part}: {numbers['top_clusters']} top clusters; largest/smallest before "
                               f"{max(before)}/{min(before)}, after {max(after)}/{min(after)}")  # fmt: skip
                else:
                    click.echo(f"  {part}: {numbers['pulls']} pulls")
            click.echo("  plots: " + ", ".join(i["path"] for i in manifest["files"] if i["path"].endswith(".png")))
        click.echo(f"content sha256 {manifest['content_sha256']}")

    _emit(manifest, as_json, render)


@cli.command("verify")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def verify_command(obj: Context, ref: str, as_json: bool) -> None:
    """Re-hash every file of a version against its manifest; exits 1 on any mismatch."""
    from curation.api import open_version

    try:
        version = open_version(ref, home=obj.home.root)
        data = {"ref": version.ref, "files": len(version.manifest["files"]), "problems": version.verify()}
    except VerifyError as error:  # the manifest itself is damaged: a mismatch like any other, not a crash
        data = {"ref": ref, "files": 0, "problems": [str(error)]}
    problems = data["problems"]
    data["ok"] = not problems

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
    from curation.audit.queries import version_diff

    data = version_diff(obj.home.root, first, second)

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
    from curation.audit.queries import run_rejects

    with obj.reader() as catalog:
        rows = run_rejects(catalog, catalog.run(run_id)["run_id"], summary=summary)
    columns = ["stage", "reason", "inputs"] if summary else ["source", "uri", "reason", "detail"]
    _emit(rows, as_json, lambda rows: _table(rows, columns))


@cli.command("dups")
@click.argument("run_id", metavar="RUN", default="latest")
@click.option("--largest", type=click.IntRange(min=1), help="Only the N largest groups, largest first.")
@click.option("--members", type=click.IntRange(min=0), help="List at most M dropped images per group (text output).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def dups_command(obj: Context, run_id: str, largest: int | None, members: int | None, as_json: bool) -> None:
    """Duplicate and contamination groups of a run, with paths: what was kept, what went and why."""
    from curation.audit.queries import run_duplicates

    with obj.reader() as catalog:
        rows = run_duplicates(catalog, catalog.run(run_id)["run_id"])
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["stage"], row["group_id"]), []).append(row)
    if largest:
        chosen = sorted(groups, key=lambda key: (-len(groups[key]), key))[:largest]
        groups = {key: groups[key] for key in chosen}
        rows = [row for key in chosen for row in groups[key]]

    def render(rows: list[dict]) -> None:
        for (stage, group_id), dropped in groups.items():
            first = dropped[0]
            where = first["kept_uri"] or first["representative"]
            if stage == "decontaminate":
                head = f"matched evaluation image {where}"
            else:
                later = f" (itself dropped later: {first['kept_dropped_for']})" if first["kept_dropped_for"] else ""
                head = f"kept {where}{later}"
            click.echo(f"{stage} group {group_id[:16]}: {head}, {len(dropped)} dropped")
            for row in dropped[:members]:
                click.echo(f"  - {row['uri']}  {row['method']} {row['similarity']:.3f} (threshold {row['threshold']})")
            if members is not None and len(dropped) > members:
                click.echo(f"  ... and {len(dropped) - members} more")
        click.echo(f"{len(groups)} groups, {len(rows)} images dropped")

    _emit(rows, as_json, render)


@cli.group("optout")
def optout_group() -> None:
    """The opt-out registry: add requests, list them, export them, apply them to a dataset."""


@optout_group.command("add")
@click.option("--url", help="An exact URL.")
@click.option("--prefix", "url_prefix", help="Every URL starting with this.")
@click.option("--domain", help="A host and all its subdomains.")
@click.option("--sha256", help="A content hash (image id).")
@click.option("--image", type=click.Path(exists=True, dir_okay=False), help="An image file: it and its copies.")
@click.option("--withdraw", help="Withdraw an earlier request (by id).")
@click.option("--reason", default="", help="Why (free text, stored with the request).")
@click.option("--requester", default="", help="Who asks (stored with the request).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def optout_add(obj: Context, url, url_prefix, domain, sha256, image, withdraw, reason, requester, as_json) -> None:
    """Register one request (append-only). Exactly one of the kind options."""
    from pathlib import Path

    from curation import audit
    from curation.audit.registry import status_on_filing

    given = {kind: value for kind, value in (("url", url), ("url_prefix", url_prefix), ("domain", domain),
             ("sha256", sha256), ("image", image), ("withdraw", withdraw)) if value}  # fmt: skip
    if len(given) != 1:
        raise click.UsageError("give exactly one of --url, --prefix, --domain, --sha256, --image, --withdraw")
    ((kind, value),) = given.items()
    if kind == "image":
        request = audit.add_optout(obj.home.root, kind=kind, image=Path(value).read_bytes(), reason=reason,
                                   requester=requester)  # fmt: skip
    else:
        request = audit.add_optout(obj.home.root, kind=kind, value=value, reason=reason, requester=requester)
    data = {**request.to_json(), "status": status_on_filing(request)}
    _emit(data, as_json, lambda d: click.echo(f"{d['request_id']} {d['kind']} {d['value']}: {d['status']}"))


@optout_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def optout_list(obj: Context, as_json: bool) -> None:
    """Every request, oldest first, with its status (received, applied in NAME@vN, withdrawn)."""
    from curation import audit

    rows = audit.optouts(obj.home.root)
    _emit(rows, as_json, lambda rows: _table(rows, ["request_id", "kind", "value", "received_at", "status"]))


@optout_group.command("export")
@click.argument("path", type=click.Path(dir_okay=False))
@click.pass_obj
def optout_export(obj: Context, path: str) -> None:
    """Write the registry as JSON Lines (one request per line, in order, with its chain hashes)."""
    from curation import audit

    rows = audit.optouts(obj.home.root)
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True, default=_default) + "\n")
    click.echo(f"{len(rows)} requests -> {path}")


@optout_group.command("apply")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def optout_apply(obj: Context, name: str, as_json: bool) -> None:
    """Publish a child of NAME's latest version without every image the active requests cover."""
    from curation import audit

    result = audit.apply_optouts(obj.home.root, name)
    data = {"parent": result.parent, "version": result.ref, "removed": [vars(match) for match in result.removed]}

    def render(data: dict) -> None:
        if data["version"] == data["parent"]:
            click.echo(f"nothing to remove: {data['parent']} holds no image any active request covers")
            return
        click.echo(f"published {data['version']} (parent {data['parent']}): {len(data['removed'])} images removed")
        for match in data["removed"]:
            click.echo(f"  - {match['image_id']}  {match['request_id']}  {match['method']}")

    _emit(data, as_json, render)


@cli.group("audit")
def audit_group() -> None:
    """Where an image came from and went; what a version is made of."""


@audit_group.command("image")
@click.argument("query", metavar="PATH|SHA256|URI")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def audit_image_command(obj: Context, query: str, as_json: bool) -> None:
    """Every pool, provenance row, decision, version and opt-out that concerns an image."""
    from curation.audit.queries import audit_image

    report = audit_image(obj.home.root, query)

    def render(report: dict) -> None:
        if not report["found"]:
            covered = f"; opt-out requests in force cover it: {', '.join(report['covered_by'])}"
            click.echo(f"nothing known about {query}" + (covered if report["covered_by"] else ""))
            return
        click.echo(f"image {', '.join(report['image_ids'])}")
        click.echo("seen at:")
        _table(report["provenance"], ["source", "uri", "redirected_to", "license", "seen_at"])
        click.echo("decisions:")
        _table(report["decisions"], ["run_id", "stage", "status", "reason", "detail"])
        click.echo("in versions:")
        _table(report["versions"], ["ref", "status", "shard"])
        if report["checkpoints"]:
            click.echo("trainer checkpoints that read it:")
            _table(report["checkpoints"], ["path", "dataset", "step"])
        if report["removed_from"]:
            click.echo("removed by opt-out:")
            _table(report["removed_from"], ["ref", "request_id", "method"])
        if report["requests"]:
            click.echo(f"opt-out requests (in force and covering it now: {', '.join(report['covered_by']) or 'none'}):")
            _table(report["requests"], ["request_id", "kind", "reason", "requester", "received_at"])

    _emit(report, as_json, render)


@audit_group.command("version")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def audit_version_command(obj: Context, ref: str, as_json: bool) -> None:
    """Composition by source, licence, domain and part; drops; opt-outs applied."""
    from curation.audit.queries import audit_version

    report = audit_version(obj.home.root, ref)

    def render(report: dict) -> None:
        click.echo(f"{report['ref']} ({report['status']}): {report['samples']} samples")
        for key in ("by_source", "by_license", "by_domain", "by_part", "optouts_applied"):
            click.echo(f"{key.replace('_', ' ')}: " + ", ".join(f"{k} {v}" for k, v in report[key].items()))
        _echo_dropped(report["dropped"])
        click.echo("trainer checkpoints:")
        _table(report["checkpoints"], ["path", "step", "created_at"])

    _emit(report, as_json, render)


@cli.command("search")
@click.argument("ref", metavar="NAME@vN")
@click.option("--image", "image_path", type=click.Path(exists=True, dir_okay=False), help="An image file to look for.")
@click.option("--id", "image_id", help="A sample's image id (SHA-256): its neighbours, itself left out.")
@click.option("--text", help="A caption, for versions embedded with a text tower (open_clip).")
@click.option("-k", "k", type=click.IntRange(1, 1000), default=10, show_default=True, help="Neighbours to list.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def search_command(obj: Context, ref: str, image_path: str | None, image_id: str | None, text: str | None, k: int,
                   as_json: bool) -> None:  # fmt: skip
    """The k samples of a version most similar to an image, a sample or a caption, by the version's own embedder."""
    from pathlib import Path

    from curation.audit.similar import similar_samples

    image = Path(image_path).read_bytes() if image_path else None
    result = similar_samples(obj.home.root, ref, image=image, image_id=image_id, text=text, k=k)

    def render(result: dict) -> None:
        query = repr(result["query_text"]) if result["query_text"] else result["query_image_id"][:16] + "..."
        click.echo(f"{result['ref']}: {len(result['neighbours'])} nearest to {query} by {result['model_id']}")
        _table(result["neighbours"], ["rank", "similarity", "image_id", "part", "source", "uri"])

    _emit(result, as_json, render)


@cli.command("gc")
@click.option("--delete", is_flag=True, help="Remove what is listed (default: only list it).")
@click.option("--blobs", is_flag=True, help="Also the image bytes that no published version or unfinished run holds.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def gc_command(obj: Context, delete: bool, blobs: bool, as_json: bool) -> None:
    """What the home holds that can go (derived caches, stale temporaries), and with --delete, remove it."""
    from curation.store.gc import collect_garbage

    report = collect_garbage(obj.home.root, blobs=blobs, delete=delete)

    def render(report: dict) -> None:
        _table([{**row, "size": _human(row["bytes"])} for row in report["categories"]],
               ["category", "files", "size", "why"])  # fmt: skip
        verb = "freed" if report["deleted"] else "would free (run with --delete)"
        click.echo(f"{verb}: {_human(report['bytes'])}")

    _emit(report, as_json, render)


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


@cli.command("sql")
@click.argument("query")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def sql_command(obj: Context, query: str, as_json: bool) -> None:
    """Read-only SQL over the catalog (DuckDB): tables runs, sources, images, provenance, decisions, versions,
    shards, version_samples, embeddings, optout_requests, optout_removals, checkpoints; view outcomes."""
    from curation.audit.queries import read_only_sql

    columns, rows = read_only_sql(obj.home.root, query)
    data = [dict(zip(columns, row)) for row in rows]
    _emit(data, as_json, lambda data: _table(data, columns))


@cli.command("statement")
@click.argument("ref")
@click.option("--out", "out_dir", default=".", show_default=True, help="Folder for NAME-vN.statement.{md,json}.")
@click.option("--json", "as_json", is_flag=True, help="Also print the statement as JSON.")
@click.pass_obj
def statement_command(obj: Context, ref: str, out_dir: str, as_json: bool) -> None:
    """Write a data statement (Markdown and JSON) for a version."""
    from curation.audit.statement import write_statement

    markdown, json_path, statement = write_statement(obj.home.root, ref, out_dir)
    _emit(statement, as_json, lambda _: click.echo(f"wrote {markdown} and {json_path}"))


@cli.command("train")
@click.option("--dataset", required=True, help="Published version to train on: NAME@vN (or NAME@latest).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Training config YAML (curation/train/configs/); defaults otherwise.")  # fmt: skip
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints, log.jsonl, export/. An existing run there is resumed.")  # fmt: skip
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key, e.g. run.steps=10.")
@click.option("--allow-superseded", is_flag=True, help="Train even on a version superseded by an opt-out.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def train_command(obj: Context, dataset, config_path, out_dir, overrides, allow_superseded, as_json) -> None:
    """Self-supervised DINOv2/DINOv3-style training on a published version (torchrun for several processes)."""
    import yaml

    from curation.core.progress import Progress
    from curation.train.config import load_train_config
    from curation.train.train import train

    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise click.BadParameter(f"expected SECTION.KEY=VALUE, got {item!r}", param_hint="--set")
        parsed[key] = yaml.safe_load(value)
    config = load_train_config(config_path, parsed)
    result = train(config, home=obj.home.root, dataset=dataset, out_dir=out_dir, allow_superseded=allow_superseded,
                   progress=Progress(show=not as_json))  # fmt: skip
    last = result.history[-1] if result.history else {}
    data = {"out_dir": str(result.out_dir), "steps": result.steps, "last": last,
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            "export": str(result.export) if result.export else None}  # fmt: skip
    loss = last.get("loss", float("nan"))
    _emit(data, as_json, lambda d: click.echo(f"trained to step {d['steps']}: loss {loss:.4f}; "
                                              f"checkpoint {d['checkpoint']}; backbone {d['export']}"))  # fmt: skip


def labelled_evaluation(command):
    """The arguments every evaluation command shares: MODEL, the labelled folders, --limit and --json."""
    for option in reversed([
        click.argument("model"),
        click.option("--train", "train_dir", required=True, type=click.Path(file_okay=False, exists=True),
                     help="Labelled images: one sub-folder per class."),
        click.option("--test", "test_dir", required=True, type=click.Path(file_okay=False, exists=True)),
        click.option("--limit", type=click.IntRange(min=1), default=None,
                     help="At most this many images per class (a quick check)."),
        click.option("--json", "as_json", is_flag=True),
    ]):  # fmt: skip
        command = option(command)
    return command


def _accuracy_summary(report: dict, protocol: str) -> str:
    return (f"{protocol} top-1 {report['accuracy']:.4f} ({report['train_images']} train / {report['test_images']} "
            f"test images, {report['classes']} classes)")  # fmt: skip


@cli.command("eval-knn")
@labelled_evaluation
@click.option("--k", type=click.IntRange(min=1), default=20, show_default=True, help="Neighbours that vote.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=0.07, show_default=True,
              help="Votes weigh exp(similarity / T).")  # fmt: skip
def eval_knn_command(model, train_dir, test_dir, limit, as_json, k, temperature) -> None:
    """Weighted k-NN accuracy of MODEL (a checkpoint .pt, an exported backbone .json, or an embed model name)."""
    from curation.train.knn import evaluate_knn

    report = evaluate_knn(model, train_dir, test_dir, k=k, temperature=temperature, limit=limit)
    _emit(report, as_json, lambda r: click.echo(_accuracy_summary(r, f"k-NN (k={k}, T={temperature})")))


@cli.command("eval-linear")
@labelled_evaluation
@click.option("--weight-decay", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="L2 penalty of the logistic regression.")  # fmt: skip
def eval_linear_command(model, train_dir, test_dir, limit, as_json, weight_decay) -> None:
    """Linear-probe accuracy of MODEL: logistic regression on its frozen features (same MODEL forms as eval-knn)."""
    from curation.train.linear import evaluate_linear

    report = evaluate_linear(model, train_dir, test_dir, weight_decay=weight_decay, limit=limit)
    _emit(report, as_json, lambda r: click.echo(_accuracy_summary(r, "linear")))


@cli.command("serve")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Service settings (YAML).")
@click.option("--host", default=None, help="Interface to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8765).")
@click.option(
    "--data-root",
    type=click.Path(file_okay=False),
    default=None,
    help="Submitted specs may read local images only under this folder (default: the current one).",
)
@click.option(
    "--specs-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Spec files the page offers; submitted specs resolve relative paths here (default ./pipelines).",
)
@click.option("--ray-address", default=None, help="Run jobs on this Ray cluster (default: Ray in-process).")
@click.option("--public-optouts/--no-public-optouts", default=None,
              help="Accept opt-out requests without a token (rate-limited; default on).")  # fmt: skip
@click.pass_obj
def serve_command(obj: Context, config_path, host, port, data_root, specs_dir, ray_address, public_optouts) -> None:
    """Serve the HTTP API and the web page over this home. Create tokens with `curate token create`."""
    from curation.service.app import serve
    from curation.service.settings import load_settings

    settings = load_settings(config_path, host=host, port=port, data_root=data_root, specs_dir=specs_dir,
                             ray_address=ray_address, public_optouts=public_optouts)  # fmt: skip
    serve(obj.home, settings)


@cli.group("token")
def token_group() -> None:
    """API tokens for `curate serve` (stored hashed in HOME/service/tokens.json)."""


@token_group.command("create")
@click.option("--name", required=True, help="Who or what holds the token (shown in job records).")
@click.option("--role", type=click.Choice(["viewer", "curator", "admin"]), required=True)
@click.option("--expires", default=None, help="Lifetime, e.g. 90d, 12h, 30m (default: no expiry).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def token_create(obj: Context, name: str, role: str, expires: str | None, as_json: bool) -> None:
    """Create a token and print it once (only its hash is kept)."""
    from curation.service.tokens import TokenStore, parse_lifetime

    lifetime = parse_lifetime(expires) if expires else None
    token, record = TokenStore(obj.home.root).create(name, role, expires_in=lifetime)
    data = {"token": token, **record.public()}

    def render(data: dict) -> None:
        click.echo(data["token"])
        click.echo(f"(token {data['token_id']}, role {data['role']}, expires {data['expires_at'] or 'never'}; "
                   "shown only now)", err=True)  # fmt: skip

    _emit(data, as_json, render)


@token_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def token_list(obj: Context, as_json: bool) -> None:
    """Tokens and their state (active, expired, revoked); never the tokens themselves."""
    from curation.service.tokens import TokenStore

    rows = [record.public() for record in TokenStore(obj.home.root).list()]
    _emit(rows, as_json, lambda rows: _table(rows, ["token_id", "name", "role", "state", "created_at", "expires_at"]))


@token_group.command("revoke")
@click.argument("token_id")
@click.pass_obj
def token_revoke(obj: Context, token_id: str) -> None:
    """Revoke a token; the service refuses it from its next request on."""
    from curation.service.tokens import TokenStore

    record = TokenStore(obj.home.root).revoke(token_id)
    click.echo(f"revoked {record.token_id} ({record.name}, {record.role})")


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
    except OSError as error:
        if error.filename is None:
            raise
        click.echo(f"error: {error.filename}: {error.strerror}", err=True)  # a path given that cannot be used
        sys.exit(2)


if __name__ == "__main__":
    main()
