"""What a source hands to the ingest stage: a planned block of inputs, and each input's bytes or its failure."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from curation.types import Reason

SIDECAR_MAX_BYTES = 1 << 20
SIDECAR_FIELDS = ("license", "attribution", "caption")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
_LONE_SURROGATE = re.compile("[\ud800-\udc7f\udd00-\udfff]")  # all but surrogateescape's \udc80-\udcff


@dataclass(frozen=True)
class Block:
    """A unit of work, retry and resume: one source's slice of inputs. JSON-serialisable (stored in plan.json)."""

    index: int
    source: str
    kind: str
    items: tuple[Any, ...]

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "source": self.source, "kind": self.kind, "items": list(self.items)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Block:
        items = tuple(tuple(item) if isinstance(item, list) else item for item in data["items"])
        return cls(data["index"], data["source"], data["kind"], items)


@dataclass
class RawInput:
    """One input: its bytes, or the reason none could be had; plus sidecar/metadata fields."""

    uri: str
    data: bytes | None = None
    redirected_to: str | None = None  # a URL row's final URL, where redirects led (the bytes came from there)
    reason: Reason | None = None
    detail: str | None = None
    meta: dict[str, str | None] = field(default_factory=dict)


def parse_sidecar(raw: bytes) -> tuple[dict[str, str | None], str | None]:
    """Licence, attribution and caption from a sidecar JSON; returns (fields, problem-or-None)."""
    if len(raw) > SIDECAR_MAX_BYTES:
        return {}, f"sidecar ignored: larger than {SIDECAR_MAX_BYTES} bytes"
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        return {}, f"sidecar ignored: not JSON ({error})"
    except RecursionError:  # a megabyte of '[' nests deeper than the parser's stack
        return {}, "sidecar ignored: JSON nested too deeply"
    if not isinstance(data, dict):
        return {}, "sidecar ignored: not a JSON object"
    fields = {}
    for name in SIDECAR_FIELDS:
        value = data.get(name)
        if value is not None:
            fields[name] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return fields, None


def storable(text: str) -> str:
    """`text` as valid UTF-8, which Arrow requires: bytes of a file or tar member name that are not UTF-8 (which
    the OS and tarfile hand over surrogate-escaped) become visible `\\xNN` escapes, so a valid name is unchanged
    and a bad one still says which bytes it had; any other lone surrogate (JSON's "\\ud800") becomes U+FFFD."""
    if text.isascii():
        return text
    escaped = _LONE_SURROGATE.sub("\ufffd", text).encode("utf-8", "surrogateescape")
    return escaped.decode("utf-8", "backslashreplace")


def has_image_extension(name: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> bool:
    return name.lower().endswith(tuple(extension.lower() for extension in extensions))


def chunk(items: list[Any], size: int) -> list[list[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


class NotRegularFile(OSError):
    """A FIFO, device or socket where a file was listed: reading it would block forever or never end."""


def open_regular_file(path: str | Path) -> BinaryIO:
    """Open `path` for reading only if it is a regular file, judged on the opened descriptor: a check by name
    before opening could be raced by swapping in a FIFO. O_NONBLOCK keeps the open of a FIFO from waiting for a
    writer; it changes nothing for a regular file."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))  # strerror: what readers record
    return os.fdopen(descriptor, "rb")
