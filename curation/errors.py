"""The project's error tree: every failure a user can cause has its own class and a message that says what to fix."""


class CurationError(Exception):
    """Base of every error the project raises on purpose."""


class SpecError(CurationError):
    """A pipeline spec is malformed: the message names the file and the offending key."""


class CatalogBusyError(CurationError):
    """Another process holds the DuckDB catalog for writing (one writer at a time)."""


class StoreError(CurationError):
    """A blob/object store refused an operation (bad key, missing object, unreachable endpoint)."""


class UnsafeKeyError(StoreError):
    """A key would resolve outside the store's root (absolute path, '..', NUL)."""


class VersionError(CurationError):
    """A dataset version reference is malformed, missing, or would be overwritten."""


class VersionExistsError(VersionError):
    """Versions are immutable: publishing to an existing NAME@vN is refused."""


class VerifyError(CurationError):
    """A published file's SHA-256 or size does not match its manifest."""


class RunError(CurationError):
    """A run id is unknown or a run cannot be resumed."""


class RunCancelled(RunError):
    """A run stopped because a cancel was requested; running its spec again resumes it."""


class TrainError(CurationError):
    """Training refused or stopped: a superseded or corrupt dataset, a bad config, diverged (NaN) losses."""
