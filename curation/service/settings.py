"""The service's settings: a strict YAML file (`curate serve --config`), overridden by command-line flags."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, field_validator

from curation.config import Strict, error_location
from curation.errors import SpecError


class ServiceSettings(Strict):
    host: str = "127.0.0.1"  # loopback by default: expose it on purpose, behind TLS
    port: int = Field(default=8765, ge=0, le=65535)
    # Where submitted specs may read images from. A spec sent as text is read as if it were a file in
    # `specs_dir` (relative paths resolve there); every local path it names must lie under `data_root`.
    data_root: Path = Path(".")
    specs_dir: Path = Path("pipelines")
    ray_address: str | None = None  # None: Ray in-process; "auto" or "ray://head:10001" joins a cluster
    # Opt-out requests from people without a token, limited per client address.
    public_optouts: bool = True
    public_optout_limit: str = "20/hour"  # COUNT/second|minute|hour|day
    # The client address (which the limit counts) from X-Forwarded-For: only behind a proxy that sets it, and only
    # when the request comes from one of `forwarded_allow_ips` (comma-separated, '*' for any). Off: the peer's.
    proxy_headers: bool = False
    forwarded_allow_ips: str = "127.0.0.1"
    max_upload_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Uploads decode inside a request handler: a small file can declare a huge canvas (9400x9400 RGBA: 343 KB, 2 GB
    # decoded), well under the decoder's ingest limit, so uploads get this much lower one, read from the header.
    max_upload_pixels: int = Field(default=25_000_000, ge=1)
    request_threads: int = Field(default=8, ge=1)  # concurrent request handlers (reads); runs have their own thread
    # The S3 endpoint and region runs use, signed with the server's credentials (its environment's). A submitted
    # spec may leave them out (it gets these) or repeat them, never name others. None: the environment's.
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    @field_validator("public_optout_limit")
    @classmethod
    def _limit_format(cls, value: str) -> str:
        if not re.fullmatch(r"\d+/(second|minute|hour|day)", value):
            raise ValueError("expected COUNT/second|minute|hour|day, e.g. 20/hour")
        return value

    def optout_limit(self) -> tuple[int, float]:
        """(requests, window in seconds)."""
        count, unit = self.public_optout_limit.split("/")
        return int(count), {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}[unit]

    def resolved(self) -> ServiceSettings:
        return self.model_copy(update={"data_root": self.data_root.resolve(), "specs_dir": self.specs_dir.resolve()})


def load_settings(path: str | Path | None, **overrides) -> ServiceSettings:
    """Settings from a YAML file (or defaults), then the non-None `overrides`; errors name the file and key."""
    data = {}
    origin = str(path) if path else "<flags>"
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise SpecError(f"{path}: cannot read service settings: {error}") from None
        if not isinstance(data, dict):
            raise SpecError(f"{path}: service settings must be a mapping")
    data.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return ServiceSettings.model_validate(data).resolved()
    except ValidationError as error:
        problems = "; ".join(f"{error_location(item)}: {item['msg']}" for item in error.errors())
        raise SpecError(f"{origin}: invalid service settings: {problems}") from None
