"""Data statement for a version (Markdown + JSON), in the spirit of a minimum deployment record: what the dataset
is, where it came from and when, under what licences, how it was curated (each stage, model id, threshold),
what was dropped and why, which opt-outs were honoured as of when, and what is known to be missing.

Every figure is computed from the version's own files (manifest, shard indexes, provenance table) and the
catalog; tests recompute them independently.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from curation.api import open_version
from curation.audit.queries import domain_of
from curation.audit.registry import active_requests, list_requests
from curation.store.catalog import Catalog
from curation.store.home import Home

OVER_REPRESENTED_SHARE = 0.25  # a domain holding more than this share of samples is reported as a gap


def build_statement(home: str | Path, ref: str) -> dict[str, Any]:
    version = open_version(ref, home=home)
    manifest = version.manifest
    samples = version.samples().to_pylist()
    provenance = version.provenance().to_pylist()
    with Catalog.open(Home(home).catalog_path, read_only=True, wait_s=30) as catalog:
        row = catalog.version(manifest["name"], manifest["version"])
        requests = list_requests(catalog)
        removals = catalog.removals_in_lineage(manifest["name"], manifest["version"])
        collected = catalog.rows(
            "SELECT source, min(seen_at) AS first_seen, max(seen_at) AS last_seen, count(*) AS inputs "
            "FROM provenance WHERE run_id = ? GROUP BY source ORDER BY source",
            [manifest["run_id"]],
        )
    licences = Counter(sample["license"] or "unknown" for sample in samples)
    domains = Counter(
        domain_of(sample["provenance"][0]["uri"], sample["provenance"][0]["source"]) for sample in samples
    )
    spec_sources = {source["name"]: source for source in manifest["spec"]["sources"]}
    total = len(samples)
    optout_steps = [step for step in manifest["lineage"] if step["stage"] == "optout"]  # its ancestors' too
    applied = {request for step in optout_steps for request in step["params"].get("applied_requests", [])}
    statement = {
        "dataset": {
            "ref": version.ref,
            "description": manifest["spec"].get("description", ""),
            "created_at": manifest["created_at"],
            "status": row["status"],
            "parent": manifest["parent"]["ref"] if manifest["parent"] else None,
            "samples": total,
            "shards": manifest["counts"]["shards"],
            "manifest_sha256": row["manifest_sha256"],
            "content_sha256": manifest["content_sha256"],
            "code_version": manifest["code_version"],
            "location": row["uri"],
            "published_images": manifest["spec"].get("publish", {}).get("image"),  # null: the original bytes
        },
        "sources": [
            {
                "name": item["source"],
                "kind": spec_sources.get(item["source"], {}).get("kind"),
                "location": _location(spec_sources.get(item["source"], {})),
                "inputs": item["inputs"],
                "first_seen": _iso(item["first_seen"]),
                "last_seen": _iso(item["last_seen"]),
                "samples": sum(item["source"] in sample["sources"] for sample in samples),
            }
            for item in collected
        ],
        "licenses": dict(licences.most_common()),
        "lineage": manifest["lineage"],
        "inputs": {
            "total": manifest["counts"]["inputs"],
            "kept": manifest["counts"]["kept_inputs"],
            "rejected": manifest["counts"]["rejected_inputs"],
        },
        "dropped": manifest["dropped"],
        "dedup_and_decontamination": {
            stage: reasons for stage, reasons in manifest["dropped"].items() if stage in ("dedup", "decontaminate")
        },
        "optouts": {
            "registry_requests": len(requests),
            "active_requests": len(active_requests(requests)),
            "registry_head": requests[-1].record_sha256 if requests else None,
            "applied_as_of": optout_steps[-1]["params"].get("as_of") if optout_steps else None,
            "applied_requests": sorted(applied | set(removals)),
            "removed_from_parent": len(manifest.get("removed", [])),
            "removed_on_the_way": sum(removals.values()),  # by every opt-out applied to it and its ancestors
            "rejected_inputs": sum(row["reason"] == "opted_out" for row in provenance),
            "how_to_request": "curate optout add (CLI), curation.audit.add_optout (Python) or the service's form",
        },
        "known_gaps": {
            "samples_without_license": licences.get("unknown", 0),
            "samples_without_attribution": sum(not sample["attribution"] for sample in samples),
            "over_represented_domains": {
                domain: round(count / total, 4)
                for domain, count in domains.most_common()
                if total and count / total > OVER_REPRESENTED_SHARE and ":" not in domain  # web hosts only
            },
            "dedup_run": any(step["stage"] == "dedup" for step in manifest["lineage"]),
            "decontamination_run": any(step["stage"] == "decontaminate" for step in manifest["lineage"]),
            "not_recorded_by_this_tool": [
                "privacy assessment and data-protection basis",
                "licence review by counsel",
                "bias and representativeness review (regions, people, lighting, sensors)",
                "intended and out-of-scope uses",
            ],
        },
        "verify": f"curate verify {version.ref}",
    }
    return statement


def _location(source: dict[str, Any]) -> str | None:
    return source.get("path") or source.get("uri") or (", ".join(source["urls"]) if source.get("urls") else None)


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def _images_line(settings: dict[str, Any] | None) -> str:
    if not settings:
        return "the original bytes, as collected"
    return (f"resized / re-encoded at publishing, `{json.dumps(settings, sort_keys=True)}` (each sample's `sha256` "
            "and `transform`; its id names the original)")  # fmt: skip


def render_markdown(statement: dict[str, Any]) -> str:
    dataset = statement["dataset"]
    lines = [
        f"# Data statement: {dataset['ref']}",
        "",
        dataset["description"] or "(no description in the pipeline spec)",
        "",
        "## Identity",
        f"- Version `{dataset['ref']}` ({dataset['status']}), created {dataset['created_at']}, "
        f"parent {dataset['parent'] or 'none'}",
        f"- {dataset['samples']} samples in {dataset['shards']} WebDataset shards at `{dataset['location']}`",
        f"- Manifest SHA-256 `{dataset['manifest_sha256']}`; content SHA-256 `{dataset['content_sha256']}`; "
        f"code {dataset['code_version']}",
        f"- Check it: `{statement['verify']}`",
        "- Images: " + _images_line(dataset["published_images"]),
        "",
        "## Sources and collection",
        "| source | kind | location | inputs | samples | first seen | last seen |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {s['name']} | {s['kind']} | `{s['location']}` | {s['inputs']} | {s['samples']} | {s['first_seen']} "
            f"| {s['last_seen']} |"
            for s in statement["sources"]
        ],
        "",
        "## Licences",
        "| licence | samples |",
        "|---|---|",
        *[f"| {name} | {count} |" for name, count in statement["licenses"].items()],
        "",
        "## Curation lineage",
        *[
            f"{i}. **{step['stage']}**" + (f" — model `{step['model_id']}`" if step.get("model_id") else "")
            + f": `{json.dumps(step['params'], sort_keys=True)}`"
            for i, step in enumerate(statement["lineage"], start=1)
        ],
        "",
        "## What was dropped",
        f"{statement['inputs']['total']} inputs: {statement['inputs']['kept']} kept, "
        f"{statement['inputs']['rejected']} rejected.",
        "",
        "| stage | reason | inputs |",
        "|---|---|---|",
        *[
            f"| {stage} | {reason} | {count} |"
            for stage, reasons in statement["dropped"].items()
            for reason, count in reasons.items()
        ],
        "",
        "## Dedup and decontamination",
        json.dumps(statement["dedup_and_decontamination"]) if statement["dedup_and_decontamination"]
        else "Not run for this version.",
        "",
        "## Opt-outs",
        f"- Registry: {statement['optouts']['registry_requests']} requests, "
        f"{statement['optouts']['active_requests']} active; head `{statement['optouts']['registry_head']}`",
        f"- Applied to this version as of {statement['optouts']['applied_as_of'] or 'never'}: "
        f"{', '.join(statement['optouts']['applied_requests']) or 'none'}; "
        f"{statement['optouts']['removed_from_parent']} images removed from the parent "
        f"({statement['optouts']['removed_on_the_way']} by opt-outs since the first version of the line); "
        f"{statement['optouts']['rejected_inputs']} inputs refused",
        f"- To request removal: {statement['optouts']['how_to_request']}",
        "",
        "## Known gaps",
        f"- Samples without a licence: {statement['known_gaps']['samples_without_license']}",
        f"- Samples without attribution: {statement['known_gaps']['samples_without_attribution']}",
        f"- Over-represented domains (> {OVER_REPRESENTED_SHARE:.0%} of samples): "
        + (", ".join(f"{d} ({share:.1%})" for d, share in statement["known_gaps"]["over_represented_domains"].items())
           or "none"),
        f"- Dedup run: {statement['known_gaps']['dedup_run']}; decontamination run: "
        f"{statement['known_gaps']['decontamination_run']}",
        "- Not recorded by this tool (to be completed by the publisher): "
        + "; ".join(statement["known_gaps"]["not_recorded_by_this_tool"]),
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def write_statement(home: str | Path, ref: str, out_dir: str | Path) -> tuple[Path, Path, dict[str, Any]]:
    statement = build_statement(home, ref)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = statement["dataset"]["ref"].replace("@", "-")
    json_path, markdown_path = out_dir / f"{stem}.statement.json", out_dir / f"{stem}.statement.md"
    json_path.write_text(json.dumps(statement, indent=2, sort_keys=True, default=str) + "\n")
    markdown_path.write_text(render_markdown(statement))
    return markdown_path, json_path, statement
