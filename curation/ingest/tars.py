"""WebDataset tar source, local or s3://: members grouped into samples by key, read as a stream, never extracted.

Members are read into memory only; nothing is ever written to disk from a tar, and members with absolute paths,
'..' parts, links or device entries become reject rows. A shard that breaks midway keeps the samples before the
break and adds one `corrupt_container` row for the rest.
"""

from __future__ import annotations

import glob
import re
import tarfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import PurePosixPath

from braceexpand import braceexpand

from curation.config import S3Settings, WebDatasetSource
from curation.errors import SpecError
from curation.ingest.raw import SIDECAR_MAX_BYTES, RawInput, has_image_extension, open_regular_file, parse_sidecar
from curation.store.s3client import make_s3_client, s3_errors, split_s3_uri
from curation.types import Reason

_KEY_AND_EXTENSION = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
MAX_EXTENDED_HEADER_BYTES = 1 << 20  # a real one holds a path and a few numbers
_EXTENDED_HEADER_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                          tarfile.GNUTYPE_LONGLINK)  # fmt: skip


def expand_shards(source: WebDatasetSource) -> list[str]:
    """Brace ranges for all URIs, globs for local paths; a pattern that matches nothing is a spec error."""
    shards = []
    for pattern in source.urls:
        for url in braceexpand(pattern):
            matched = [url] if url.startswith("s3://") else sorted(glob.glob(url))
            if not matched:
                raise SpecError(f"source {source.name!r}: no tar shard matches {url}")
            shards.extend(matched)
    return shards


def read_shard(shard: str, settings: S3Settings, max_bytes: int) -> Iterator[RawInput]:
    try:
        stream = _open(shard, settings)
    except (OSError, *s3_errors()) as error:
        yield RawInput(shard, reason=Reason.READ_FAILED, detail=str(error)[:300])
        return
    with closing(stream):
        yield from _read_stream(shard, stream, max_bytes)


def _open(shard: str, settings: S3Settings):
    if shard.startswith("s3://"):
        bucket, key = split_s3_uri(shard)
        return make_s3_client(settings).get_object(Bucket=bucket, Key=key)["Body"]
    return open_regular_file(shard)  # a FIFO named like a shard would block the read forever


def _read_stream(shard: str, stream, max_bytes: int) -> Iterator[RawInput]:
    group_key: str | None = None
    group: list[tuple[tarfile.TarInfo, str, bytes | None]] = []
    try:
        with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_StrictTarInfo) as archive:
            for member in archive:
                uri = f"{shard}#{member.name}"
                if member.isdir():
                    continue
                unsafe = _unsafe(member)
                if unsafe:
                    yield RawInput(uri, reason=unsafe[0], detail=unsafe[1])
                    continue
                match = _KEY_AND_EXTENSION.match(member.name)
                key, extension = (match.group(1), match.group(2).lower()) if match else (member.name, "")
                if key != group_key:
                    yield from _emit(shard, group, max_bytes)
                    group_key, group = key, []
                limit = max_bytes if has_image_extension(member.name) else SIDECAR_MAX_BYTES
                wanted = has_image_extension(member.name) or extension in ("json", "txt")
                data = archive.extractfile(member).read() if wanted and member.size <= limit else None
                if wanted:
                    group.append((member, extension, data))
    except Exception as error:  # not only TarError: tarfile's header parsing raises ValueError and others too
        yield from _emit(shard, group, max_bytes)
        group = []
        detail = f"tar unreadable from here: {type(error).__name__}: {error}"
        yield RawInput(shard, reason=Reason.CORRUPT_CONTAINER, detail=detail[:300])
    yield from _emit(shard, group, max_bytes)


class _StrictTarInfo(tarfile.TarInfo):
    """tarfile ends an archive quietly at a missing, short or garbled header after the first member, so a shard cut
    between members would look complete; only the zero-block end-of-archive marker may end it here. And it reads
    a PAX or GNU long-name header whole, whatever size it claims: a few MB of gzipped zeros would cost GBs."""

    @classmethod
    def fromtarfile(cls, tarfile_):
        try:
            return super().fromtarfile(tarfile_)
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as error:
            raise tarfile.ReadError(f"bad or missing header at offset {tarfile_.offset}: {error}") from None

    def _proc_member(self, tarfile_):
        if self.type in _EXTENDED_HEADER_TYPES and self.size > MAX_EXTENDED_HEADER_BYTES:
            raise tarfile.ReadError(f"extended header (type {self.type!r}) at offset {self.offset} claims "
                                    f"{self.size} bytes > {MAX_EXTENDED_HEADER_BYTES}")  # fmt: skip
        return super()._proc_member(tarfile_)


def _unsafe(member: tarfile.TarInfo) -> tuple[Reason, str] | None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or "\\" in member.name or "\x00" in member.name:
        return Reason.PATH_TRAVERSAL, f"member path {member.name!r} escapes the archive"
    if not member.isfile():
        return (
            Reason.UNSAFE_TAR_MEMBER,
            f"member {member.name!r} is not a regular file (type {member.type!r})",
        )
    return None


def _emit(shard: str, group: list[tuple[tarfile.TarInfo, str, bytes | None]], max_bytes: int) -> Iterator[RawInput]:
    """One RawInput per image member of a sample; the sample's .json/.txt members are its metadata."""
    meta: dict[str, str | None] = {}
    problem = None
    for _member, extension, data in group:
        if extension == "txt" and data is not None:
            meta.setdefault("caption", data.decode("utf-8", "replace"))
    for _member, extension, data in group:
        if extension == "json" and data is not None:
            fields, problem = parse_sidecar(data)
            meta.update(fields)
    for member, _extension, data in group:
        if not has_image_extension(member.name):
            continue
        uri = f"{shard}#{member.name}"
        if data is None:
            yield RawInput(uri, reason=Reason.TOO_LARGE, detail=f"{member.size} bytes > max_bytes {max_bytes}")
        else:
            yield RawInput(uri, data=data, detail=problem, meta=dict(meta))
