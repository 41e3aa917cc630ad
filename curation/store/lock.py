"""One run at a time per home: an advisory lock file held for the whole of a run (and of a garbage collection).

Why a lock of its own: a run lets go of the catalog while its workers ingest, embed or derive, so that readers
and short writers (`curate show`, `curate optout add`, a trainer recording a checkpoint) get in during a long
run. What must still wait is a second run or a gc of the same home: gc would take the blobs a block is writing.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from curation.errors import CatalogBusyError

LOCK_FILE = "home.lock"


@contextmanager
def home_lock(root: Path, holder: str) -> Iterator[None]:
    """Hold the home's lock for `holder` (e.g. 'run demo-2026...'), or fail at once naming who holds it."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            found = handle.read().strip() or "another process"
            raise CatalogBusyError(f"{root}: {found} is working in this home; one run (or gc) at a time: "
                                   "try again when it ends") from None  # fmt: skip
        handle.truncate(0)
        handle.write(f"{holder} (pid {os.getpid()})\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
