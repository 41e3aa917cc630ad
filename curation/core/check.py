"""`curate check SPEC`: what a run of a spec would read and do, found out without running it.

A paper-scale spec is launched on a cluster long after it is written. A missing folder, an unreadable URL table, a
tar pattern that matches nothing or a weights file that is not there should show up before that, on the machine
that writes the spec, without starting Ray or contacting S3. The check reads only local things: it counts what
the planner would list (folders, URL tables, tar shards), lists S3 locations without contacting them, and checks
the embedder's files and device. Problems the driver would hit are errors; a missing weights file or GPU is only a
warning on Ray, because actors read and use them on their own nodes (with executor local they are errors).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.config import (
    BalancedPart,
    FolderSource,
    PipelineSpec,
    RetrievalPart,
    S3Source,
    SourcePart,
    UrlListSource,
    WebDatasetSource,
)
from curation.embed.registry import list_embedders
from curation.embed.torch_models import is_weights_path, require_device, unknown_architecture
from curation.errors import CatalogBusyError, SpecError, VersionError
from curation.ingest.folder import list_folder
from curation.ingest.tars import expand_shards
from curation.ingest.urls import read_url_table
from curation.publish.release import resolve
from curation.store.catalog import Catalog
from curation.store.home import Home


@dataclass
class CheckReport:
    name: str
    sources: list[dict[str, Any]] = field(default_factory=list)  # name, kind, what (one line), count (or None)
    stages: list[str] = field(default_factory=list)  # the stages a run goes through, each with its key settings
    errors: list[str] = field(default_factory=list)  # the run would fail on these
    warnings: list[str] = field(default_factory=list)  # worth a look; a run may still succeed

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "sources": self.sources, "stages": self.stages,
                "errors": self.errors, "warnings": self.warnings}  # fmt: skip


def check_spec(spec: PipelineSpec, home: Home | None = None) -> CheckReport:
    """Everything `curate check` reports about an already validated spec; with `home`, also whether the published
    versions it names (`stages.dedup.against`) are there, and what a run would publish next."""
    report = CheckReport(spec.name)
    for number, source in enumerate(spec.sources):
        report.sources.append(_inspect_source(source, f"sources.{number}", report))
    report.stages = _describe_stages(spec, report)
    if home is not None:
        _check_home(spec, home, report)
    return report


def _check_home(spec: PipelineSpec, home: Home, report: CheckReport) -> None:
    against = spec.stages.dedup.against if spec.stages.dedup else ()
    if not home.catalog_path.exists():
        if against:
            report.errors.append(f"stages.dedup.against: {home.root} has no catalog, so none of {list(against)} "
                                 "exists there")  # fmt: skip
        return
    try:
        catalog = Catalog.open(home.catalog_path, read_only=True, wait_s=2)
    except CatalogBusyError:
        report.warnings.append(f"{home.root} is busy (a run or a server holds its catalog): its versions were not "
                               "checked")  # fmt: skip
        return
    with catalog:
        for ref in against:
            try:
                resolve(catalog, ref)
            except VersionError as error:
                report.errors.append(f"stages.dedup.against: {error}")
        latest = catalog.versions(spec.name)
    report.stages.append(f"  (latest in {home.root}: {spec.name}@v{latest[-1]['version']})" if latest
                         else f"  (no {spec.name} in {home.root} yet: a run publishes {spec.name}@v1)")  # fmt: skip


def _inspect_source(source, where: str, report: CheckReport) -> dict[str, Any]:
    """One line about a source, with the number of inputs the planner would list where that is known offline."""
    entry: dict[str, Any] = {"name": source.name, "kind": source.kind, "count": None}
    try:
        if isinstance(source, FolderSource):
            entry["count"] = len(list_folder(source))
            entry["what"] = f"{entry['count']:,} image files under {source.path}"
        elif isinstance(source, UrlListSource):
            entry["count"] = len(read_url_table(source))
            entry["what"] = f"{entry['count']:,} URLs in {source.path}"
        elif isinstance(source, WebDatasetSource):
            shards = expand_shards(source)  # brace ranges and local globs; s3:// shards are not contacted
            entry["count"] = len(shards)
            remote = " (S3, not contacted)" if any(shard.startswith("s3://") for shard in shards) else ""
            entry["what"] = f"{entry['count']:,} tar shards{remote}"
        elif isinstance(source, S3Source):
            entry["what"] = f"objects under {source.uri} (S3, not contacted)"
    except SpecError as error:
        report.errors.append(f"{where}: {error}")
        entry["what"] = "unreadable"
    if entry["count"] == 0:
        report.warnings.append(f"{where}: source {source.name!r} has no inputs")
    return entry


def _describe_stages(spec: PipelineSpec, report: CheckReport) -> list[str]:
    stages = spec.stages
    decode = stages.decode
    quality = decode.quality and ", ".join(f"{key} {value}" for key, value in decode.quality if value is not None)
    described = [f"decode (min side {decode.min_side} px, at most {decode.max_pixels:,} pixels and "
                 f"{decode.max_bytes:,} bytes{'; quality ' + quality if quality else ''})"]  # fmt: skip
    policy = stages.license
    described.append(f"license (allow {list(policy.allow) if policy.allow is not None else 'any'}, deny "
                     f"{list(policy.deny)}, unknown: {policy.unknown})")  # fmt: skip
    if stages.embed and stages.embed.model.partition(":")[0] not in list_embedders():
        report.errors.append(f"stages.embed.model: unknown embedder {stages.embed.model!r}; known: "
                             f"{', '.join(list_embedders())}")  # fmt: skip
    elif stages.embed:
        described.append(f"embed ({stages.embed.model}; {_embedder_inputs(spec, report)})")
    if stages.filter:
        rules = [f"drop cosine>={rule.max_similarity} to {rule.text!r}" for rule in stages.filter.prompts]
        if stages.filter.min_caption_similarity is not None:
            rules.append(f"drop caption cosine<{stages.filter.min_caption_similarity}")
        described.append(f"filter ({'; '.join(rules)})")
    if stages.dedup:
        dedup = stages.dedup
        methods = [f"pHash d<={dedup.phash_max_distance}"] if dedup.perceptual else []
        if dedup.copy_detection:
            on = " (IVF cells as Ray tasks)" if dedup.distributed else ""
            methods.append(f"k-NN graph k={dedup.k}, cosine>={dedup.threshold}, index {dedup.index}{on}")
        if dedup.against:
            methods.append(f"against {', '.join(dedup.against)}")
        described.append(f"dedup ({'; '.join(methods) or 'exact copies only'})")
    if stages.decontaminate:
        sets = stages.decontaminate.sets
        for number, source in enumerate(sets):
            _inspect_source(source, f"stages.decontaminate.sets.{number}", report)
        described.append(f"decontaminate ({len(sets)} evaluation sets, cosine>={stages.decontaminate.threshold})")
    select = stages.select
    if select.mode == "compose":
        on = f", k-means on {select.shards} Ray actors" if select.shards > 1 else ""
        described.append(f"select compose, seed {select.seed}{on}; parts in priority order:")
        described += [f"  {part.name}: {_describe_part(part)}" for part in select.parts]
    else:
        described.append("select keep_all")
    image = spec.publish.image
    if image is not None:
        size = "" if image.resize == "none" else f"{image.resize} {image.size} px{', upscale' if image.upscale else ''}"
        encoding = f"as {image.format} (quality {image.quality})" if image.format else "in their own format"
        described.append(f"derive published images: {size}{', ' if size else ''}{encoding}, on the executor")
    target = spec.publish.uri or "HOME/datasets"
    described.append(f"publish {spec.name}@vN to {target} ({spec.publish.shard_max_samples:,} samples per shard)")
    return described


def _describe_part(part: SourcePart | RetrievalPart | BalancedPart) -> str:
    if isinstance(part, SourcePart):
        subset = f", {part.target:,} of them at random" if part.target else ""
        return f"the sources {', '.join(part.sources)} as they are{subset}"
    if isinstance(part, RetrievalPart):
        cap = f", at most {part.cap:,}" if part.cap else ""
        if part.method == "sample":
            return f"the {part.k} nearest pool images of each {'/'.join(part.seeds)} image{cap}"
        return (f"up to {part.per_cluster:,} pool images from each of {part.clusters:,} pool clusters holding more "
                f"than {part.min_seeds} {'/'.join(part.seeds)} images{cap}")  # fmt: skip
    levels = " -> ".join(f"{level.clusters:,}" for level in part.levels)
    return f"{part.target:,} images balanced over hierarchical k-means {levels} clusters, {part.rule} in each leaf"


def _embedder_inputs(spec: PipelineSpec, report: CheckReport) -> str:
    """Where the embedder's weights come from, and whether its device exists. With executor local the embedder
    runs here, so a missing file or GPU is an error; on Ray it is a warning (the actors' nodes may have them)."""
    stage = spec.stages.embed
    here = spec.execution.executor == "local"
    problems = report.errors if here else report.warnings
    try:
        require_device(stage)
    except SpecError as error:
        problems.append(str(error) if here else f"{error} here (the Ray actors' nodes may have one)")
    prefix, _, argument = stage.model.partition(":")
    try:
        if problem := unknown_architecture(prefix, argument):
            report.errors.append(problem)
    except SpecError as error:  # the library is not installed here
        problems.append(str(error))
    if prefix == "builtin":
        return "no weights"
    if prefix == "bundled":
        if argument == "default":
            return "the shipped default embedder"
        path = Path(argument).expanduser()
    elif stage.pretrained is None:
        return "random init"
    elif prefix == "open_clip" and not is_weights_path(stage.pretrained):
        report.warnings.append(f"stages.embed.pretrained: open_clip tag {stage.pretrained!r} downloads its weights "
                               f"on first use (needs a network on every embed node)")  # fmt: skip
        return f"tag {stage.pretrained}"
    else:
        path = Path(stage.pretrained).expanduser()
    if not path.is_file():
        needs = "execution.executor local reads it here" if here else "every embed actor's node needs it"
        problems.append(f"stages.embed: {path} is not on this machine ({needs})")
    return str(path)
