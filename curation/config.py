"""Pipeline spec: strict YAML -> frozen models.

Unknown keys are errors (a typo must never silently fall back to a default), and every error names the file
and the dotted key. Secrets (S3 credentials) are `SecretStr`, so they are redacted wherever a spec is dumped
(manifests, run records, logs).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import types
import typing
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from curation.errors import SpecError

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
DEFAULT_ROBOTS_OPT_OUT = ("noai", "noimageai", "noindex", "noimageindex")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


def _local_or_s3(location: str) -> str:
    """A location is a local path or exactly `s3://...`: a mistyped scheme (`s3:/b`, `S3://b`, `gs://b`) would
    otherwise be taken for a local folder and quietly filled."""
    if URL_SCHEME.match(location) and not location.startswith("s3://"):
        raise ValueError(f"{location!r} looks like a URL, but only s3:// URIs are supported (anything else is a "
                         "local path)")  # fmt: skip
    return location


Location = Annotated[str, AfterValidator(_local_or_s3)]


@functools.cache
def _types_in(annotation: Any) -> frozenset[Any]:
    """The plain types a field's annotation admits (through unions, Optional and Annotated)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return frozenset().union(*(_types_in(arg) for arg in typing.get_args(annotation)))
    if origin is Annotated:
        return _types_in(typing.get_args(annotation)[0])
    if origin is Literal:
        return frozenset(type(arg) for arg in typing.get_args(annotation))
    return frozenset([annotation if isinstance(annotation, type) else object])


class Strict(BaseModel):
    """Unknown keys are errors, and so are numbers given as true/false (YAML reads `yes`, `on` and `no` as
    booleans, which would pass as 1 and 0) or whole numbers given as strings. A float may be a string: PyYAML
    reads `1e-4` (no dot) as one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name)
            admitted = _types_in(field.annotation) if field else frozenset()
            if not admitted & {int, float} or admitted & {bool, str, object}:
                continue
            if isinstance(value, bool):
                raise PydanticCustomError("not_a_number", "a number is needed, not {given}",
                                          {"field": name, "given": str(value).lower()})  # fmt: skip
            if isinstance(value, str) and float not in admitted:
                raise PydanticCustomError("not_a_number", "a whole number is needed, not the string {given}",
                                          {"field": name, "given": repr(value)})  # fmt: skip
        return data


class S3Settings(Strict):
    """Connection to an S3-compatible service. Missing fields fall back to the usual AWS_* variables."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None


class FolderSource(Strict):
    """A local folder, walked recursively in sorted order; `x.json` beside `x.jpg` is its sidecar."""

    kind: Literal["folder"]
    name: str = Field(pattern=NAME_PATTERN)
    path: Path
    extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
    license: str | None = None  # default licence for images whose sidecar names none


class WebDatasetSource(Strict):
    """WebDataset tar shards: local paths/globs or s3:// URIs (brace ranges like {000..009} allowed)."""

    kind: Literal["webdataset"]
    name: str = Field(pattern=NAME_PATTERN)
    urls: tuple[Location, ...] = Field(min_length=1)
    license: str | None = None


class S3Source(Strict):
    """Every object under an s3://bucket/prefix whose name ends in one of `extensions`."""

    kind: Literal["s3"]
    name: str = Field(pattern=NAME_PATTERN)
    uri: str = Field(pattern=r"^s3://[^/]+(/.*)?$")
    extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
    license: str | None = None


class UrlListSource(Strict):
    """A CSV or Parquet table of URLs (plus optional license/caption/attribution columns) fetched over HTTP."""

    kind: Literal["urls"]
    name: str = Field(pattern=NAME_PATTERN)
    path: Path
    url_column: str = "url"
    license_column: str = "license"
    caption_column: str = "caption"
    attribution_column: str = "attribution"
    license: str | None = None


Source = Annotated[FolderSource | WebDatasetSource | S3Source | UrlListSource, Field(discriminator="kind")]


class QualityChecks(Strict):
    """Pixel-level junk filters on the decoded image (curation.decode.quality): None turns a check off. Figures are
    grey levels 0-255 measured at most 128 px a side, so thresholds do not depend on the input's size."""

    min_contrast: float | None = Field(default=2.0, ge=0)  # grey-level std below -> low_information (blank)
    min_brightness: float | None = Field(default=None, ge=0, le=255)  # mean grey level below -> too_dark
    max_brightness: float | None = Field(default=None, ge=0, le=255)  # mean grey level above -> too_bright
    min_sharpness: float | None = Field(default=None, ge=0)  # Laplacian variance below -> blurry
    max_aspect_ratio: float | None = Field(default=None, ge=1)  # longer / shorter side above -> extreme_aspect

    @model_validator(mode="after")
    def _brightness_range(self) -> QualityChecks:
        low, high = self.min_brightness, self.max_brightness
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_brightness {low} is above max_brightness {high}: every image would be rejected")
        return self


# Pillow format names a published shard can carry (a member extension each: curation/publish/shards.py).
ImageFormat = Literal["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO"]


class DecodeStage(Strict):
    """Safe decode: what an acceptable image is. Rejects get a reason code (docs/reasons.md)."""

    max_bytes: int = Field(default=64 * 2**20, gt=0)  # larger inputs are rejected unread (too_large)
    max_pixels: int = Field(default=89_478_485, gt=0)  # Pillow's own bomb limit; above -> decompression_bomb
    min_side: int = Field(default=32, ge=1)  # shorter side below this -> too_small
    formats: tuple[ImageFormat, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO")
    quality: QualityChecks | None = None  # pixel-level junk filters; off unless configured

    @field_validator("formats", mode="before")
    @classmethod
    def _upper_case_formats(cls, formats: Any) -> Any:
        """Pillow's names are upper case; `[png, jpeg]` means the same formats."""
        if isinstance(formats, list | tuple):
            return [name.upper() if isinstance(name, str) else name for name in formats]
        return formats


class LevelSpec(Strict):
    """One level of hierarchical k-means (Vo et al. 2024); the first level clusters images, the next its centroids."""

    clusters: int = Field(ge=1)
    resampling_steps: int = Field(default=0, ge=0)  # re-cluster points resampled from every cluster
    sample_size: int = Field(default=10, ge=1)  # points per cluster at each resampling step
    selection: Literal["closest", "random"] = "closest"  # which points a resampling step takes
    split: int = Field(default=1, ge=1)  # finest level only: split each cluster into this many by k-means


class SourcePart(Strict):
    """A curated dataset as it is: the images of the named sources (DINOv3 mixes ImageNet-1k in whole)."""

    kind: Literal["source"]
    name: str = Field(pattern=NAME_PATTERN)
    sources: tuple[str, ...] = Field(min_length=1)
    target: int | None = Field(default=None, ge=1)  # a random subset of this size; None: all


class RetrievalPart(Strict):
    """DINOv2 retrieval: the seed sources' images pull look-alikes from the pool (the other sources)."""

    kind: Literal["retrieval"]
    name: str = Field(pattern=NAME_PATTERN)
    seeds: tuple[str, ...] = Field(min_length=1)  # sources whose images are the seeds
    method: Literal["sample", "cluster"] = "sample"
    k: int = Field(default=4, ge=1)  # sample: neighbours per seed image (DINOv2: 4, or 32 for ImageNet-1k)
    floor: float = Field(default=-1.0, ge=-1, le=1)  # sample: minimum cosine
    cap: int | None = Field(default=None, ge=1)  # at most this many images per seed dataset (DINOv2: 1M)
    clusters: int = Field(default=100, ge=1)  # cluster: k-means clusters of the pool (DINOv2: 100k)
    min_seeds: int = Field(default=3, ge=0)  # cluster: a cluster contributes if it holds more seeds than this
    per_cluster: int = Field(default=10_000, ge=1)  # cluster: images per contributing cluster


class BalancedPart(Strict):
    """Hierarchical k-means with resampling, then balanced hierarchical sampling of `target` images."""

    kind: Literal["balanced"]
    name: str = Field(pattern=NAME_PATTERN)
    target: int = Field(ge=1)
    levels: tuple[LevelSpec, ...] = Field(min_length=1)  # finest first, e.g. 10k -> 1k -> 100 -> 10 clusters
    rule: Literal["random", "closest"] = "random"  # how points are taken inside a leaf cluster
    sources: tuple[str, ...] = ()  # the pool; empty: every source that is no other part's seed or curated set
    iterations: int = Field(default=20, ge=1)  # Lloyd iterations per k-means

    @model_validator(mode="after")
    def _levels_coarsen(self) -> BalancedPart:
        clusters = [level.clusters for level in self.levels]
        if any(finer <= coarser for finer, coarser in zip(clusters, clusters[1:])):
            raise ValueError(f"levels go finest first, each with fewer clusters than the one before; got {clusters}")
        if any(level.split > 1 for level in self.levels[1:]):
            raise ValueError("split applies to the finest level only (levels[0])")
        return self


Part = Annotated[SourcePart | RetrievalPart | BalancedPart, Field(discriminator="kind")]


class SelectStage(Strict):
    """Selection: keep every image, or compose the version from named parts (docs/selection.md)."""

    mode: Literal["keep_all", "compose"] = "keep_all"
    parts: tuple[Part, ...] = ()  # compose: the parts, in priority order (an image's first part names it)
    seed: int = 0  # every random choice of the selection derives from it
    shards: int = Field(default=1, ge=1)  # k-means and retrieval scans on this many Ray actors, 1/shards each

    @model_validator(mode="after")
    def _parts_for_compose(self) -> SelectStage:
        if self.mode == "compose" and not self.parts:
            raise ValueError("mode compose needs at least one part")
        if self.mode != "compose" and (self.parts or self.shards > 1):
            raise ValueError("parts and shards > 1 need mode compose: set mode: compose, or remove them")
        names = [part.name for part in self.parts]
        if len(set(names)) != len(names):
            raise ValueError("part names must be unique")
        return self


class EmbedStage(Strict):
    """Embedding with a registered model (docs/embedding.md). Vectors are cached per model id across runs."""

    model: str  # builtin | open_clip:<arch> | timm:<name> | bundled:<path to backbone .json>
    pretrained: str | None = None  # open_clip: a tag or a local file; timm: a local checkpoint; None: random init
    pretrained_tag: str | None = None  # open_clip with a local file: the hub tag it is (sets its preprocessing)
    batch_size: int = Field(default=64, ge=1)  # images per forward pass
    block_size: int = Field(default=1024, ge=1)  # images per block (the unit of retry and resume)
    actors: int | None = Field(default=None, ge=1)  # None: one per GPU (or per cpus_per_actor CPUs without GPUs)
    cpus_per_actor: int = Field(default=1, ge=1)  # also the torch thread count of a CPU actor
    gpus_per_actor: float = Field(default=1.0, gt=0, le=1)  # fractions share one GPU between actors
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when the actor has a GPU
    precision: Literal["bf16", "fp32"] = "bf16"  # autocast dtype on CUDA; CPU always runs fp32
    compile: bool = False  # torch.compile the model (CUDA; first batches are slow)
    gpu_decode: bool = True  # decode JPEGs with nvjpeg on the GPU; anything it refuses falls back to Pillow

    def weights_file(self) -> str | None:
        """`pretrained` when it names a local file: always for timm; for open_clip when it looks like a path (else
        it is a tag, which downloads); the other embedders take no `pretrained`."""
        family = self.model.partition(":")[0]
        if self.pretrained is None or family not in ("timm", "open_clip"):
            return None
        looks_like_a_file = "/" in self.pretrained or self.pretrained.endswith(WEIGHT_SUFFIXES)
        return self.pretrained if family == "timm" or looks_like_a_file else None

    @model_validator(mode="after")
    def _tag_names_a_file(self) -> EmbedStage:
        if self.pretrained_tag is not None and not (self.model.startswith("open_clip:") and self.weights_file()):
            raise ValueError("pretrained_tag says which open_clip hub tag a local `pretrained` file is: it needs "
                             "model open_clip:<arch> and pretrained a weights file")  # fmt: skip
        return self


class LicenseStage(Strict):
    """Licence policy. Licences compare case-insensitively; an image with no licence is its own category."""

    allow: tuple[str, ...] | None = None  # None: every licence not denied; a list: only these
    deny: tuple[str, ...] = ()  # always dropped (license_denied)
    unknown: Literal["keep", "drop"] = "keep"  # no licence at all: keep (and report), or drop (license_unknown)


class OptOutStage(Strict):
    """How uploaded-image opt-outs match (docs/optouts.md). URL, domain and hash requests match exactly."""

    phash_max_distance: int = Field(default=4, ge=0, le=32)  # Hamming bits of 64
    embedding_threshold: float = Field(default=0.9, gt=0, le=1)  # cosine with the run's embedder (builtin if none)


class DedupStage(Strict):
    """Near-duplicate removal (docs/dedup.md). Exact copies are one image already (content address)."""

    perceptual: bool = True  # pHash groups: resized / re-encoded copies, cheap
    phash_max_distance: int = Field(default=4, ge=0, le=12)  # Hamming bits of 64
    copy_detection: bool = True  # k-NN graph on the embed stage's vectors (needs stages.embed)
    k: int = Field(default=64, ge=1, le=2048)  # neighbours per image
    threshold: float = Field(default=0.9, gt=0, le=1)  # cosine; DINOv2 used 0.6 with SSCD descriptors
    index: Literal["auto", "flat", "ivf"] = "auto"  # auto: exact flat search below ivf_min_size images
    ivf_min_size: int = Field(default=50_000, ge=1)  # exact search below it (docs/dedup.md has the figures)
    nprobe: int = Field(default=8, ge=1)  # IVF cells each image looks into
    batch_size: int = Field(default=16_384, ge=1)  # query rows per search call: bounds memory
    against: tuple[str, ...] = ()  # published versions (NAME@vN or NAME) whose images win: incremental dedup
    distributed: bool = False  # the IVF self-join's cells and decontamination's search as Ray tasks (executor ray)


class PromptRule(Strict):
    """Drop images whose cosine to a text prompt reaches `max_similarity` (e.g. "a screenshot of text")."""

    text: str = Field(min_length=1, max_length=1000)
    max_similarity: float = Field(ge=-1, le=1)


class FilterStage(Strict):
    """Text-guided filtering with the embedder's text tower (open_clip), as LAION filtered with CLIP: drop what is
    near an unwanted prompt, and (`min_caption_similarity`) images whose own caption does not describe them."""

    prompts: tuple[PromptRule, ...] = ()
    min_caption_similarity: float | None = Field(default=None, ge=-1, le=1)  # LAION-400M kept pairs >= 0.3
    batch_size: int = Field(default=256, ge=1)  # captions and prompts embedded per forward pass

    @model_validator(mode="after")
    def _has_a_rule(self) -> FilterStage:
        if not self.prompts and self.min_caption_similarity is None:
            raise ValueError("give prompts, min_caption_similarity or both")
        return self


class DecontaminateStage(Strict):
    """Drop every pool image whose duplicate group touches an evaluation image (DINOv2's relative dedup)."""

    sets: tuple[Source, ...] = Field(min_length=1)  # evaluation sets, any source kind; never published
    threshold: float = Field(default=0.45, gt=0, le=1)  # cosine to an evaluation image; stricter than dedup's
    # Cosine at which two pool images count as one group (copies of a copy go too); default: dedup's threshold.
    # As low as `threshold` chains look-alikes through the pool (docs/dedup.md).
    pool_threshold: float | None = Field(default=None, gt=0, le=1)


class Stages(Strict):
    decode: DecodeStage = DecodeStage()
    license: LicenseStage = LicenseStage()
    embed: EmbedStage | None = None  # no embedding unless configured
    filter: FilterStage | None = None  # text-guided filtering (needs an open_clip embedder); off unless configured
    dedup: DedupStage | None = None  # no dedup unless configured
    decontaminate: DecontaminateStage | None = None  # needs stages.embed
    optout: OptOutStage = OptOutStage()
    select: SelectStage = SelectStage()


class FetchSettings(Strict):
    """HTTP fetching for URL-list sources."""

    concurrency: int = Field(default=16, ge=1, le=256)  # parallel requests per block task
    timeout_s: float = Field(default=20.0, gt=0)  # connect and read timeout per request
    retries: int = Field(default=2, ge=0, le=10)  # retries on connection errors and 429/5xx
    backoff_s: float = Field(default=0.5, ge=0)  # base of the exponential back-off between retries
    user_agent: str = "curation-bot/0.1 (+https://github.com/curation/curation; respects X-Robots-Tag noai)"
    robots_opt_out: tuple[str, ...] = DEFAULT_ROBOTS_OPT_OUT  # X-Robots-Tag values that mean "do not take"


class ExecutionSettings(Strict):
    executor: Literal["ray", "local"] = "ray"  # local runs blocks in-process (debugging, tests)
    ray_address: str | None = None  # None: start Ray in-process; "auto" or "ray://host:10001": a cluster
    num_cpus: int | None = Field(default=None, ge=1)  # CPUs for a locally started Ray; None = all
    block_size: int = Field(default=256, ge=1)  # inputs per block (the unit of retry and resume)
    max_retries: int = Field(default=3, ge=0)  # Ray retries of a block whose worker died


class StorageSettings(Strict):
    blobs: Location | None = None  # content-addressed image bytes; default HOME/blobs; may be s3://bucket/prefix


class ImageTransform(Strict):
    """Published images resized and/or re-encoded (img2dataset's image_size, resize_mode, encode_format); an
    image that needs neither is published as its original bytes. curation/publish/transform.py."""

    resize: Literal["shorter_side", "longer_side", "center_crop", "none"] = "shorter_side"
    size: int = Field(default=512, ge=16, le=16384)  # that side's length in pixels (center_crop: the square's)
    upscale: bool = False  # False: images already within `size` keep their size
    format: Literal["JPEG", "WEBP", "PNG"] | None = None  # null: the original's format (MPO -> JPEG)
    quality: int = Field(default=90, ge=1, le=100)  # JPEG and WebP


class PublishSettings(Strict):
    uri: Location | None = None  # where versions go; default HOME/datasets; may be s3://bucket/prefix
    image: ImageTransform | None = None  # null: publish the original bytes
    shard_max_samples: int = Field(default=1000, ge=1)
    shard_max_bytes: int = Field(default=512 * 2**20, ge=1)


class PipelineSpec(Strict):
    """One curation run: sources in, one dataset version out."""

    name: str = Field(pattern=NAME_PATTERN)  # the output dataset name; versions are NAME@v1, NAME@v2, ...
    description: str = ""
    sources: tuple[Source, ...] = Field(min_length=1)
    stages: Stages = Stages()
    fetch: FetchSettings = FetchSettings()
    execution: ExecutionSettings = ExecutionSettings()
    storage: StorageSettings = StorageSettings()
    publish: PublishSettings = PublishSettings()
    s3: S3Settings = S3Settings()

    @model_validator(mode="after")
    def _unique_source_names(self) -> PipelineSpec:
        names = [source.name for source in self.sources]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"source names must be unique; repeated: {', '.join(repeated)}")
        return self

    @model_validator(mode="after")
    def _stages_have_their_inputs(self) -> PipelineSpec:
        if self.stages.dedup and self.stages.dedup.copy_detection and self.stages.embed is None:
            raise ValueError("stages.dedup.copy_detection needs stages.embed (or set copy_detection: false)")
        if self.stages.decontaminate and self.stages.embed is None:
            raise ValueError("stages.decontaminate needs stages.embed")
        if self.stages.filter and not (self.stages.embed and self.stages.embed.model.startswith("open_clip:")):
            raise ValueError("stages.filter needs a text tower: stages.embed.model open_clip:<arch>")
        if self.stages.dedup and self.stages.dedup.distributed and self.execution.executor != "ray":
            raise ValueError("stages.dedup.distributed scans on Ray tasks: it needs execution.executor ray")
        if self.stages.select.shards > 1 and self.execution.executor != "ray":
            raise ValueError("stages.select.shards > 1 runs k-means on Ray actors: it needs execution.executor ray")
        if self.stages.select.mode == "compose":
            if self.stages.embed is None and any(part.kind != "source" for part in self.stages.select.parts):
                raise ValueError("stages.select: retrieval and balanced parts need stages.embed")
            known = {source.name for source in self.sources}
            for part in self.stages.select.parts:
                named = set(getattr(part, "sources", ())) | set(getattr(part, "seeds", ()))
                if named - known:
                    raise ValueError(f"stages.select part {part.name!r} names unknown sources {sorted(named - known)}")
        return self

    def public_dict(self) -> dict[str, Any]:
        """The spec as JSON-able data with secrets redacted: what manifests and run records store."""
        return self.model_dump(mode="json")

    def sha256(self) -> str:
        """Hash of the redacted spec; the run's identity for resume."""
        canonical = json.dumps(self.public_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _format_errors(error: ValidationError, origin: str, what: str = "pipeline spec") -> str:
    lines = [f"{origin}: invalid {what}"]
    errors = error.errors()
    for item in errors:
        nested = any(
            other["loc"][: len(item["loc"])] == item["loc"] and len(other["loc"]) > len(item["loc"]) for other in errors
        )
        if item["type"] == "too_short" and nested:
            continue  # pydantic's echo of a failed item ("0 items after validation") adds nothing
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"  {error_location(item) or '<top>'}: {message}")
    return "\n".join(lines)


def error_location(item: dict[str, Any]) -> str:
    """The dotted key a pydantic error is about, as the user wrote it."""
    location = ".".join(str(part) for part in item["loc"] if not re.fullmatch(r"[a-z]+-source", str(part)))
    # drop the source or part kind pydantic puts after an index (`sources.0.folder.path`), not a field `urls`
    location = re.sub(r"(\.\d+)\.(folder|webdataset|s3|urls|source|retrieval|balanced)(?=\.|$)", r"\1", location)
    if item["type"] == "not_a_number":  # raised for the whole mapping: name the key itself
        location = ".".join(part for part in (location, item["ctx"]["field"]) if part)
    return location


def parse_spec(data: Any, *, origin: str = "<spec>", base_dir: Path | None = None) -> PipelineSpec:
    """Validate a spec given as a mapping; relative local paths are resolved against `base_dir`."""
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: a pipeline spec must be a mapping, got {type(data).__name__}")
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(_format_errors(error, origin)) from None
    if base_dir is None:
        return spec
    return _resolve_paths(spec, base_dir)


def _resolve_paths(spec: PipelineSpec, base_dir: Path) -> PipelineSpec:
    """Every relative local path made absolute against `base_dir` (the spec's folder): what a run opens must not
    depend on the working directory, and a service that confines a spec must check the paths the run will use."""
    stages: dict[str, Any] = {}
    if spec.stages.decontaminate:
        sets = tuple(_resolve_source(source, base_dir) for source in spec.stages.decontaminate.sets)
        stages["decontaminate"] = spec.stages.decontaminate.model_copy(update={"sets": sets})
    if spec.stages.embed:
        stages["embed"] = _resolve_model_files(spec.stages.embed, base_dir)
    storage = spec.storage.model_copy(update={"blobs": _resolve_location(spec.storage.blobs, base_dir)})
    publish = spec.publish.model_copy(update={"uri": _resolve_location(spec.publish.uri, base_dir)})
    sources = tuple(_resolve_source(source, base_dir) for source in spec.sources)
    return spec.model_copy(update={"sources": sources, "stages": spec.stages.model_copy(update=stages),
                                   "storage": storage, "publish": publish})  # fmt: skip


def _resolve_source(source: Any, base_dir: Path) -> Any:
    if isinstance(source, FolderSource | UrlListSource):
        return source.model_copy(update={"path": _absolute(source.path, base_dir)})
    if isinstance(source, WebDatasetSource):
        urls = tuple(url if url.startswith("s3://") else str(_absolute(url, base_dir)) for url in source.urls)
        return source.model_copy(update={"urls": urls})
    return source


def _resolve_model_files(stage: EmbedStage, base_dir: Path) -> EmbedStage:
    """`bundled:PATH` (but `bundled:default`, the shipped embedder) and a `pretrained` weights file."""
    family, _, argument = stage.model.partition(":")
    update = {}
    if family == "bundled" and argument != "default":
        update["model"] = f"bundled:{_absolute(argument, base_dir)}"
    if stage.weights_file():
        update["pretrained"] = str(_absolute(stage.weights_file(), base_dir))
    return stage.model_copy(update=update)


def _absolute(path: str | Path, base_dir: Path) -> Path:
    """`~` expands (as a shell and the model readers expand it), then a relative path joins `base_dir`; `..` and
    links are resolved only in the relative case, so an absolute path stays as written."""
    expanded = Path(path).expanduser()
    return expanded if expanded.is_absolute() else (base_dir / expanded).resolve()


def _resolve_location(location: str | None, base_dir: Path) -> str | None:
    """A local folder for blobs or versions; s3:// URIs stay as they are."""
    if location is None or location.startswith("s3://"):
        return location
    return str(_absolute(location, base_dir))


class _RepeatedKey(Exception):
    """A mapping key given twice: YAML itself keeps the last value and drops the first without a word."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, but a repeated key is an error; keys merged in with `<<: *anchor` may still be overridden."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable):
                if key in seen:
                    raise _RepeatedKey(f"line {key_node.start_mark.line + 1}: key {key!r} is repeated")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and validate a YAML spec file. Relative paths inside it are relative to the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError(f"{path}: cannot read pipeline spec ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise SpecError(f"{path}: not UTF-8 text (invalid byte at offset {error.start})") from None
    return parse_spec(read_yaml(text, str(path)), origin=str(path), base_dir=path.resolve().parent)


def read_yaml(text: str, origin: str) -> Any:
    """A spec's YAML (or JSON) text as data; bad YAML and repeated keys are SpecErrors naming `origin`."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise SpecError(f"{origin}: not valid YAML: {error}") from None
    except _RepeatedKey as error:
        raise SpecError(f"{origin}: {error}") from None
