"""A curation run end to end: plan -> ingest blocks (executor) -> commit to catalog -> select -> publish.

Resumable by construction: the plan is written once per run, each block's output file marks it done, and the
release step recognises a version this run already committed. A killed `curate run SPEC` started again with the
same spec resumes the unfinished run instead of starting over.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curation.audit.apply import covered_images, optout_step, removals_by_run, supersede_covered
from curation.audit.matching import MatchSettings, derived_requests, exclusions_of
from curation.audit.policy import license_verdict
from curation.audit.registry import REQUEST_ID, active_requests, list_requests
from curation.config import EmbedStage, PipelineSpec
from curation.core.progress import Progress
from curation.dedup.driver import representatives, run_decontaminate, run_dedup
from curation.embed.driver import run_embed_stage
from curation.embed.text_filter import filter_images
from curation.embed.vectors import load_matrix
from curation.errors import RunCancelled, RunError
from curation.executors import make_executor
from curation.ingest import Block, plan_blocks
from curation.ingest.stage import BlockSummary, block_output_key, ingest_block
from curation.publish.release import publish
from curation.publish.transform import derive_images, published_form
from curation.select.compose import compose
from curation.select.report import build_reports
from curation.select.sharded import shard_pool
from curation.store.catalog import Catalog
from curation.store.home import Home
from curation.store.lock import home_lock
from curation.store.objects import read_parquet
from curation.types import INPUT_SCHEMA, KEPT, REJECTED, Reason

log = logging.getLogger("curation")

# Columns of the version's provenance.parquet: every input of the run and its fate. `seen_at` stays in the
# catalog only, so that the same inputs give a byte-identical version.
VERSION_PROVENANCE_COLUMNS = [
    "source", "uri", "redirected_to", "image_id", "status", "stage", "reason", "detail", "license", "attribution",
    "caption", "bytes", "format", "width", "height",
]  # fmt: skip


@dataclass
class RunResult:
    run_id: str
    version: str
    unchanged: bool
    resumed_blocks: int
    stats: dict[str, Any] = field(default_factory=dict)


def run_pipeline(
    spec: PipelineSpec,
    *,
    home: Home,
    fresh: bool = False,
    ray_address: str | None = None,
    progress: bool | Progress = True,
) -> RunResult:
    """Run `spec` (resuming its unfinished run unless `fresh`). `progress`: draw bars, or a Progress to report to."""
    progress = progress if isinstance(progress, Progress) else Progress(show=progress)
    with home_lock(home.root, f"a run of {spec.name}"), Catalog.open(home.catalog_path) as catalog:
        run_id = None if fresh else catalog.unfinished_run(spec.sha256())
        if run_id is None:
            run_id = f"{spec.name}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
            catalog.start_run(run_id, spec.name, spec.sha256(), spec.public_dict())
            log.info("run %s started", run_id)
        else:
            log.info("resuming unfinished run %s", run_id)
        progress.begin_run(run_id)
        try:
            result = _execute(spec, home, catalog, run_id, ray_address, progress)
        except RunCancelled:
            catalog.mark_run(run_id, status="cancelled")
            raise
        except BaseException:
            if catalog.connected:  # else the catalog could not be reopened; the run stays resumable as it is
                catalog.mark_run(run_id, status="failed")
            raise
        catalog.mark_run(run_id, status="finished", version=result.version, stats=result.stats)
        return result


def _load_or_plan(spec: PipelineSpec, home: Home, run_id: str) -> list[Block]:
    key = f"{run_id}/plan.json"
    if home.runs.exists(key):
        return [Block.from_json(item) for item in json.loads(home.runs.get(key))]
    blocks = plan_blocks(spec)
    home.runs.put(key, json.dumps([block.to_json() for block in blocks]).encode())
    return blocks


class _Executor:
    """The run's executor, started on first use (a resumed run with nothing left to do never starts Ray)."""

    def __init__(self, spec: PipelineSpec, ray_address: str | None):
        self.spec, self.ray_address = spec, ray_address
        self.executor = None
        self.startup_seconds = 0.0

    def get(self):
        if self.executor is None:
            begun = time.perf_counter()
            self.executor = make_executor(self.spec.execution, ray_address=self.ray_address)
            self.startup_seconds = round(time.perf_counter() - begun, 3)
        return self.executor

    def close(self) -> None:
        if self.executor is not None:
            self.executor.close()


def _execute(spec: PipelineSpec, home: Home, catalog: Catalog, run_id: str, ray_address,
             progress: Progress) -> RunResult:  # fmt: skip
    stats: dict[str, Any] = {}
    started = time.perf_counter()
    blocks = _load_or_plan(spec, home, run_id)
    stats["plan"] = {"blocks": len(blocks), "seconds": round(time.perf_counter() - started, 3)}
    requests = active_requests(list_requests(catalog))  # every run checks the opt-out registry
    done = {block.index for block in blocks if home.runs.exists(block_output_key(run_id, block.index))}
    done -= _refused_for_withdrawn(home, run_id, done, {request.request_id for request in requests})
    pending = [block for block in blocks if block.index not in done]
    exclusions = exclusions_of(derived_requests(catalog, requests))
    model_id = None
    executor = _Executor(spec, ray_address)
    try:
        with catalog.released():  # hours on a big pool: readers and opt-out filings get in meanwhile
            stats["ingest"] = _ingest(spec, home, run_id, blocks, pending, executor, exclusions, progress)
        stats["ingest"]["resumed_blocks"] = len(done)
        inputs = _read_inputs(home, run_id, blocks)
        sources = [source.model_dump(mode="json") for source in spec.sources]
        catalog.commit_inputs(run_id, inputs, sources)
        kept = inputs.filter(pc.equal(inputs["status"], KEPT))
        lineage = [{"stage": "ingest", "params": spec.stages.decode.model_dump(mode="json")}]
        kept = _license_stage(catalog, run_id, kept, spec.stages.license)
        lineage.append({"stage": "license", "params": spec.stages.license.model_dump(mode="json")})
        if spec.stages.embed is not None:
            stats["embed"], model, verdicts = run_embed_stage(spec, home, catalog, run_id, kept, executor.get, progress)
            model_id = model["model_id"]
            lineage.append({"stage": "embed", "params": spec.stages.embed.model_dump(mode="json"), **model})
            kept = _drop_images(catalog, run_id, "embed", 2, kept, verdicts)
        if spec.stages.filter is not None:
            progress.stage("filter")
            stats["filter"], verdicts = filter_images(spec.stages.filter, spec.stages.embed, home, catalog, kept,
                                                      model_id, progress)  # fmt: skip
            kept = _drop_images(catalog, run_id, "filter", 2, kept, verdicts)  # before dedup picks representatives
            lineage.append({"stage": "filter", "params": spec.stages.filter.model_dump(mode="json"),
                            "model_id": model_id})  # fmt: skip
        before_dedup, duplicates_of = kept, {}
        if spec.stages.dedup is not None:
            progress.stage("dedup")
            stats["dedup"], verdicts = run_dedup(spec, home, catalog, run_id, kept, model_id, executor.get, progress)
            kept = _drop_images(catalog, run_id, "dedup", 3, kept, verdicts)
            duplicates_of = representatives(verdicts)
            lineage.append(
                {"stage": "dedup", "params": spec.stages.dedup.model_dump(mode="json"), "model_id": model_id}
            )
        if spec.stages.decontaminate is not None:  # on the pool before dedup: any copy may be the one that matches
            stats["decontaminate"], verdicts = run_decontaminate(spec, home, catalog, run_id, before_dedup, model_id,
                                                                 executor.get, progress, duplicates_of)  # fmt: skip
            _drop_images(catalog, run_id, "decontaminate", 4, before_dedup, verdicts)  # overrides dedup's reason
            kept = kept.filter(pa.array([image_id not in verdicts for image_id in kept["image_id"].to_pylist()]))
            params = spec.stages.decontaminate.model_dump(mode="json")
            lineage.append({"stage": "decontaminate", "params": params, **_model(model_id)})
        progress.stage("optout")
        kept, optout_step, matches = _optout_stage(spec, home, catalog, run_id, kept, stage="optout", order=5)
        lineage.append(optout_step)
        progress.stage("select")
        selection, reports = None, {}
        if spec.stages.select.mode == "compose":
            selection, stats["select"], reports = _compose(spec, home, catalog, run_id, kept, model_id, executor,
                                                           progress)  # fmt: skip
        _select_stage(catalog, run_id, kept, selection)
        if selection is not None:
            chosen = [image_id in selection for image_id in kept["image_id"].to_pylist()]
            kept = kept.filter(pa.array(chosen, pa.bool_()))
        params = spec.stages.select.model_dump(mode="json")
        lineage.append({"stage": "select", "params": params, **_model(model_id)})
        if _registry_moved(catalog, optout_step):  # a request filed while the run embedded or selected
            kept, late_step, late = _optout_stage(spec, home, catalog, run_id, kept, stage="optout_recheck", order=11)
            lineage.append(late_step)
            matches += late
        samples = _samples(kept, selection)
        if spec.publish.image is not None:
            progress.stage("derive")
            with catalog.released():
                derived, stats["derive"] = derive_images(samples, spec.publish.image, home.blobs(spec), home.runs,
                                                         run_id, executor.get, block_size=spec.execution.block_size,
                                                         progress=progress)  # fmt: skip
            verdicts = {image_id: (Reason.TRANSFORM_FAILED, row["error"])
                        for image_id, row in derived.items() if row["error"]}  # fmt: skip
            kept = _drop_images(catalog, run_id, "publish", 10, kept, verdicts)
            samples = [published_form(sample, derived[sample["image_id"]], spec.publish.image)
                       for sample in samples if sample["image_id"] not in verdicts]  # fmt: skip
        else:
            samples = [published_form(sample, None, None) for sample in samples]
        stats["startup_seconds"] = executor.startup_seconds
    finally:
        executor.close()

    started = time.perf_counter()
    release = publish(
        catalog=catalog,
        target=home.datasets(spec),
        staging=home.staging(spec, run_id),
        blobs=home.blobs(spec),
        samples=samples,
        reports=reports,
        provenance=_version_provenance(catalog, run_id),
        name=spec.name,
        run_id=run_id,
        spec=spec.public_dict(),
        spec_sha256=spec.sha256(),
        lineage=lineage,
        counts={
            "inputs": inputs.num_rows,
            "kept_inputs": kept.num_rows,
            "rejected_inputs": inputs.num_rows - kept.num_rows,
        },
        dropped=_dropped(catalog, run_id),
        max_samples=spec.publish.shard_max_samples,
        max_bytes=spec.publish.shard_max_bytes,
        optout_removals=removals_by_run(catalog, matches),
        progress=progress,
    )
    supersede_covered(catalog, spec.name)  # older versions still holding what a request in force covers
    stats["publish"] = {
        "seconds": round(time.perf_counter() - started, 3),
        "samples": release.manifest["counts"]["samples"],
        "shards": release.manifest["counts"]["shards"],
        "unchanged": release.unchanged,
    }
    return RunResult(run_id, release.ref, release.unchanged, len(done), stats)


def _license_stage(catalog: Catalog, run_id: str, kept: pa.Table, policy) -> pa.Table:
    verdicts = [license_verdict(license_, policy) for license_ in kept["license"].to_pylist()]
    rejected = [i for i, verdict in enumerate(verdicts) if verdict]
    catalog.record_stage(
        run_id,
        "license",
        1,
        _decisions(kept.take(pa.array(rejected, pa.int64())), REJECTED, [verdicts[i] for i in rejected]),
    )
    return kept.filter(pa.array([verdict is None for verdict in verdicts], pa.bool_()))


def _drop_images(catalog: Catalog, run_id: str, stage: str, order: int, kept: pa.Table,
                 verdicts: dict[str, tuple[Reason, str]]) -> pa.Table:  # fmt: skip
    """Record a stage's per-image verdicts for every input of those images; returns the inputs still kept."""
    image_ids = kept["image_id"].to_pylist()
    hit = [i for i, image_id in enumerate(image_ids) if image_id in verdicts]
    rows = kept.take(pa.array(hit, pa.int64()))
    catalog.record_stage(run_id, stage, order, _decisions(rows, REJECTED, [verdicts[image_ids[i]] for i in hit]))
    return kept.filter(pa.array([image_id not in verdicts for image_id in image_ids], pa.bool_()))


def _optout_stage(spec, home: Home, catalog: Catalog, run_id: str, kept: pa.Table, *, stage: str, order: int):
    """Every request in force, read afresh (one filed while the run ingested, or before it resumed, counts), matched
    against every kept image: URLs against all the places it was seen, hashes, uploads by pixels, images earlier
    applies removed, then the near-duplicates of everything matched. Returns the images still kept and the
    lineage step (with the request ids it checked). `stage` names its decisions: a stage's decisions replace
    its earlier ones, so the recheck before publishing records under its own name."""
    registry = list_requests(catalog)
    requests = active_requests(registry)
    by_image: dict[str, list[str]] = {}
    for image_id, uri, redirected_to in zip(*(kept[name].to_pylist() for name in ("image_id", "uri", "redirected_to"))):
        by_image.setdefault(image_id, []).extend(where for where in (uri, redirected_to) if where)
    embed = spec.stages.embed or EmbedStage(model="builtin")
    settings = MatchSettings(spec.stages.optout.phash_max_distance, spec.stages.optout.embedding_threshold)
    matches, model_id = covered_images(catalog, home, home.blobs(spec), embed.model_copy(update={"device": "cpu"}),
                                       list(by_image), list(by_image.values()), requests, settings)  # fmt: skip
    verdicts = {m.image_id: (Reason.OPTED_OUT, f"{m.request_id} ({m.method})") for m in matches}
    step = optout_step(registry, requests, matches, model_id, settings)
    return _drop_images(catalog, run_id, stage, order, kept, verdicts), step, matches


def _registry_moved(catalog: Catalog, step: dict[str, Any]) -> bool:
    checked = step["params"]["active_requests"]
    return [request.request_id for request in active_requests(list_requests(catalog))] != checked


def _ingest(spec, home, run_id, blocks, pending, executor: _Executor, exclusions,
            progress: Progress) -> dict[str, Any]:  # fmt: skip
    """Run the pending blocks; the rate excludes executor start-up (Ray takes seconds), reported on its own."""
    totals = Counter()
    seconds = 0.0
    if pending:
        runner = executor.get()
        started = time.perf_counter()
        with progress.bar("ingest", total=len(blocks), initial=len(blocks) - len(pending), unit="block") as bar:
            summary: BlockSummary
            for summary in runner.map(ingest_block, pending, spec, home.blobs(spec), home.runs, run_id, exclusions):
                totals.update(inputs=summary.inputs, kept=summary.kept)
                rate = totals["inputs"] / max(time.perf_counter() - started, 1e-9)
                bar.update(1, inputs=totals["inputs"], kept=totals["kept"], rejected=totals["inputs"] - totals["kept"],
                           img_s=round(rate))  # fmt: skip
            seconds = time.perf_counter() - started
    missing = [block.index for block in pending if not home.runs.exists(block_output_key(run_id, block.index))]
    if missing:  # an executor must never lose a block silently; rerunning resumes just these
        raise RunError(f"run {run_id}: {len(missing)} block(s) produced no output (first: {missing[:5]})")
    return {
        "blocks": len(pending),
        "inputs": totals["inputs"],
        "kept": totals["kept"],
        "seconds": round(seconds, 3),
        "inputs_per_s": round(totals["inputs"] / seconds, 1) if seconds > 0 else 0.0,
        "executor": spec.execution.executor,
    }


def _refused_for_withdrawn(home: Home, run_id: str, done: set[int], active: set[str]) -> set[int]:
    """Finished blocks of a resumed run that refused an input for a request no longer in force (withdrawn since):
    their outputs go, and they are read again under the registry as it is now."""
    stale = set()
    for index in done:
        key = block_output_key(run_id, index)
        rows = read_parquet(home.runs, key, columns=["reason", "detail"]).to_pylist()
        if any(row["reason"] == Reason.OPTED_OUT and set(REQUEST_ID.findall(row["detail"] or "")) - active
               for row in rows):  # fmt: skip
            home.runs.delete(key)
            stale.add(index)
    return stale


def _read_inputs(home: Home, run_id: str, blocks: list[Block]) -> pa.Table:
    """The run's ingest rows. A block written before a column was added (a run resumed after an upgrade) gets
    nulls there."""
    tables = [read_parquet(home.runs, block_output_key(run_id, block.index)) for block in blocks]
    if not tables:
        return INPUT_SCHEMA.empty_table()
    tables = [_with_every_column(table) for table in tables]
    return pa.concat_tables(tables).cast(INPUT_SCHEMA).sort_by([("block", "ascending"), ("position", "ascending")])


def _with_every_column(table: pa.Table) -> pa.Table:
    for column in INPUT_SCHEMA:
        if column.name not in table.column_names:
            table = table.append_column(column, pa.nulls(table.num_rows, column.type))
    return table.select(INPUT_SCHEMA.names)


def _decisions(rows: pa.Table, status: str, verdicts: list[tuple[str, str]] | None = None) -> pa.Table:
    """Decision rows for `rows`; `verdicts` gives (reason, detail) per row for rejections."""
    verdicts = verdicts or [(None, None)] * rows.num_rows
    return pa.table(
        {
            "block": rows["block"],
            "position": rows["position"],
            "status": pa.array([status] * rows.num_rows, pa.string()),
            "reason": pa.array([None if reason is None else str(reason) for reason, _ in verdicts], pa.string()),
            "detail": pa.array([detail for _, detail in verdicts], pa.string()),
        }
    )


def _model(model_id: str | None) -> dict[str, str]:
    """The lineage field naming the vectors a stage used, when it used any."""
    return {"model_id": model_id} if model_id else {}


def _compose(spec, home: Home, catalog: Catalog, run_id: str, kept: pa.Table, model_id: str | None,
             executor: _Executor, progress: Progress):  # fmt: skip
    """Selection by composition over the distinct kept images; returns ({image id: reasons}, stats). With
    `stages.select.shards` > 1 its k-means run on that many Ray actors over the memory-mapped vectors."""
    sources: dict[str, set[str]] = {}
    for image_id, source in zip(kept["image_id"].to_pylist(), kept["source"].to_pylist()):
        sources.setdefault(image_id, set()).add(source)
    image_ids = sorted(sources)
    vectors = None
    if model_id is not None and image_ids:
        vectors = load_matrix(catalog, home.vectors, model_id, image_ids)  # memory-mapped: compose streams past RAM
    shards = spec.stages.select.shards
    uses_vectors = vectors is not None and any(part.kind != "source" for part in spec.stages.select.parts)
    sharding = shard_pool(executor.get(), vectors, shards) if shards > 1 and uses_vectors else nullcontext()
    with sharding as pool:
        selection, details = compose(spec.stages.select, image_ids, [sources[i] for i in image_ids], vectors,
                                     workdir=home.runs.root / run_id / "select", shards=pool,
                                     progress=progress)  # fmt: skip
    by_part = Counter(reason["part"] for reasons in selection.values() for reason in reasons)
    first_part = Counter(reasons[0]["part"] for reasons in selection.values())
    stats = {"images": len(image_ids), "selected": len(selection), "pulls_by_part": dict(by_part),
             "samples_by_part": dict(first_part)}  # fmt: skip
    if pool is not None:
        stats["shards"] = {"actors": len(pool.actors), "nodes": len(set(pool.nodes))}
    return selection, stats, build_reports(details, selection)


def _select_stage(catalog: Catalog, run_id: str, kept: pa.Table, selection: dict | None) -> None:
    """Every still-kept input gets its select decision: kept, or not_selected under composition."""
    image_ids = kept["image_id"].to_pylist()
    chosen = [selection is None or image_id in selection for image_id in image_ids]
    rejected = [i for i, ok in enumerate(chosen) if not ok]
    decisions = [_decisions(kept.filter(pa.array(chosen, pa.bool_())), KEPT)]
    if rejected:
        verdicts = [(Reason.NOT_SELECTED, "in no part of the composition")] * len(rejected)
        decisions.append(_decisions(kept.take(pa.array(rejected, pa.int64())), REJECTED, verdicts))
    catalog.record_stage(run_id, "select", 9, pa.concat_tables(decisions))


def _samples(kept: pa.Table, selection: dict[str, list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """One sample per distinct image id, carrying every place it was seen (sorted for determinism) and, under
    composition, every reason it was selected."""
    by_image: dict[str, dict[str, Any]] = {}
    for row in kept.to_pylist():
        sample = by_image.setdefault(
            row["image_id"],
            {
                "key": row["image_id"],
                "image_id": row["image_id"],
                **{name: row[name] for name in ("format", "width", "height", "bytes", "mode", "frames")},
                "provenance": [],
            },
        )
        sample["provenance"].append(
            {name: row[name] for name in ("source", "uri", "redirected_to", "license", "attribution", "caption")}
        )
    samples = []
    for image_id in sorted(by_image):
        sample = by_image[image_id]
        sample["provenance"].sort(key=lambda entry: (entry["source"], entry["uri"]))
        sample["sources"] = sorted({entry["source"] for entry in sample["provenance"]})
        for name in ("license", "attribution", "caption"):
            sample[name] = next((entry[name] for entry in sample["provenance"] if entry[name]), None)
        reasons = selection.get(image_id) if selection is not None else None
        sample["parts"] = list(dict.fromkeys(reason["part"] for reason in reasons)) if reasons else ["pool"]
        sample["part"] = sample["parts"][0]
        sample["selection"] = json.dumps(reasons, sort_keys=True) if reasons else None
        samples.append(sample)
    return samples


def _version_provenance(catalog: Catalog, run_id: str) -> pa.Table:
    columns = ", ".join(f"o.{c}" if c in ("source", "uri", "image_id") else c for c in VERSION_PROVENANCE_COLUMNS)
    return catalog.db.sql(
        f"SELECT {columns} FROM outcomes o JOIN provenance p USING (run_id, block, position) "
        "WHERE o.run_id = ? ORDER BY o.source, o.uri, o.block, o.position",
        params=[run_id],
    ).to_arrow_table()


def _dropped(catalog: Catalog, run_id: str) -> dict[str, dict[str, int]]:
    dropped: dict[str, dict[str, int]] = {}
    for stage, reason, count in catalog.db.execute(
        "SELECT stage, reason, count(*) FROM outcomes WHERE run_id = ? AND status = ? GROUP BY ALL ORDER BY ALL",
        [run_id, REJECTED],
    ).fetchall():
        dropped.setdefault(stage, {})[reason] = count
    return dropped
