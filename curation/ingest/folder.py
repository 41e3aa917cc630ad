"""Local folder source: every file with an image extension under the root, recursively, in sorted order."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from curation.config import FolderSource
from curation.errors import SpecError
from curation.ingest.raw import (
    SIDECAR_MAX_BYTES,
    RawInput,
    has_image_extension,
    open_regular_file,
    parse_sidecar,
)
from curation.types import Reason


def list_folder(source: FolderSource) -> list[str]:
    root = source.path
    if not root.is_dir():
        raise SpecError(f"source {source.name!r}: folder does not exist: {root}")
    files = (path for path in root.rglob("*") if path.is_file() or path.is_symlink())
    return sorted(str(path) for path in files if has_image_extension(path.name, source.extensions))


def read_files(paths: tuple[str, ...], max_bytes: int) -> Iterator[RawInput]:
    for name in paths:
        path = Path(name)
        try:
            with open_regular_file(path) as handle:
                size = os.fstat(handle.fileno()).st_size
                if size > max_bytes:
                    yield RawInput(name, reason=Reason.TOO_LARGE, detail=f"{size} bytes > max_bytes {max_bytes}")
                    continue
                data = handle.read(size + 1)  # a buffer the file's size, not max_bytes
                if len(data) > size:  # it grew after the stat: read on, up to the limit
                    data += handle.read(max_bytes + 1 - len(data))
            if len(data) > max_bytes:
                yield RawInput(name, reason=Reason.TOO_LARGE, detail=f"more than max_bytes {max_bytes}")
                continue
        except OSError as error:
            yield RawInput(name, reason=Reason.READ_FAILED, detail=error.strerror or str(error))
            continue
        meta, problem = _sidecar(path)
        yield RawInput(name, data=data, detail=problem, meta=meta)


def _sidecar(path: Path) -> tuple[dict, str | None]:
    sidecar = path.with_suffix(".json")
    try:
        with open_regular_file(sidecar) as handle:
            return parse_sidecar(handle.read(SIDECAR_MAX_BYTES + 1))  # enough to tell it is too large
    except FileNotFoundError:
        return {}, None
    except OSError as error:
        return {}, f"sidecar ignored: {error.strerror}"
