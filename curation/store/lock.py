"""One run at a time per home: an advisory lock file held for the whole of a run (and of a garbage collection),
and by `curate serve` for its whole life.

Why a lock of its own: a run lets go of the catalog while its workers ingest, embed or derive, so that readers
and short writers (`curate show`, `curate optout add`, a trainer recording a checkpoint) get in during a long
run. What must still wait is a second run or a gc of the same home (gc would take the blobs a block is writing),
and a service, which would keep the catalog from the run for good.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from curation.errors import CatalogBusyError

LOCK_FILE = "home.lock"
_HELD_BY_PROCESS: dict[Path, IO[str]] = {}  # homes this process holds for its life (the service)


def _acquire(root: Path, holder: str) -> IO[str]:
    """The open, locked lock file, naming `holder`; or a CatalogBusyError naming who holds it."""
    root.mkdir(parents=True, exist_ok=True)
    handle = open(root / LOCK_FILE, "a+")  # noqa: SIM115 - held open as long as the lock is
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        found = handle.read().strip() or "another process"
        handle.close()
        raise CatalogBusyError(f"{root}: {found} is working in this home; one run (or gc, or service) at a time: "
                               "try again when it ends") from None  # fmt: skip
    handle.truncate(0)
    handle.write(f"{holder} (pid {os.getpid()})\n")
    handle.flush()
    return handle


@contextmanager
def home_lock(root: Path, holder: str) -> Iterator[None]:
    """Hold the home's lock for `holder` (e.g. 'a run of demo'), or fail at once naming who holds it. Within a
    process that holds the home for its life (the service, running its own jobs) this is already so."""
    if root.resolve() in _HELD_BY_PROCESS:
        yield
        return
    handle = _acquire(root, holder)
    try:
        yield
    finally:
        handle.truncate(0)
        handle.close()


def hold_for_process(root: Path, holder: str) -> None:
    """Hold the home's lock until this process exits (`curate serve`): no CLI run or gc starts meanwhile, and a
    CLI run already going (which may have let go of the catalog) keeps the service from starting."""
    _HELD_BY_PROCESS[root.resolve()] = _acquire(root, holder)
