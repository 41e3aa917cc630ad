"""One object-store interface over a local directory and an S3 prefix.

Blobs, run block outputs and published versions all go through it, so everything the pipeline writes can live
on local disk (the embedded default) or on S3 (a multi-node cluster sharing one home) with the same code.
Keys are '/'-separated relative paths; a key that could escape the root is refused.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import threading
from pathlib import Path
from typing import BinaryIO, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from curation.config import S3Settings
from curation.errors import StoreError, UnsafeKeyError
from curation.store.s3client import make_s3_client, split_s3_uri

log = logging.getLogger("curation")

_SAFE_PART = re.compile(r"^[A-Za-z0-9._@=+-]+$")


def check_key(key: str) -> str:
    """Refuse keys that are absolute, contain '..' or empty parts, or odd characters."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") or not _SAFE_PART.match(part) for part in parts):
        raise UnsafeKeyError(f"unsafe store key: {key!r}")
    return key


class ObjectStore(Protocol):
    uri: str

    def put(self, key: str, data: bytes) -> None: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def put_new(self, key: str, data: bytes) -> bool: ...
    def get(self, key: str) -> bytes: ...
    def open(self, key: str) -> BinaryIO: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def url(self, key: str) -> str: ...


class LocalStore:
    """A directory. Writes are atomic (temp file + rename), so a reader never sees half an object."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.uri = str(self.root)
        self._folders: set[Path] = set()  # folders known to exist: skips a mkdir per put

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_folders": set()}

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _folder(self, path: Path) -> None:
        if path.parent not in self._folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(path.parent)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self._folder(path)
        temporary = path.parent / f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name}"
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)

    def put_new(self, key: str, data: bytes) -> bool:
        """Create `key` only if it does not exist (atomically: O_EXCL); False when it does."""
        path = self._path(key)
        self._folder(path)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        return True

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        self._folder(target)
        temporary = target.parent / f".tmp-{os.getpid()}-{target.name}"
        shutil.copyfile(path, temporary)
        os.replace(temporary, target)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"no such object: {self.url(key)}") from None

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise StoreError(f"no such object: {self.url(key)}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        found = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(key for key in found if not Path(key).name.startswith(".tmp-"))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def rename_prefix(self, source: str, target: str) -> None:
        """Atomically move a finished staging folder into place (the local publish commit point)."""
        destination = self._path(target)
        if destination.exists():
            raise StoreError(f"refusing to replace existing {destination}")
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self._path(source), destination)

    def url(self, key: str) -> str:
        return str(self._path(key))


class S3Store:
    """A bucket prefix through boto3. Single PUTs are atomic in S3; multi-object atomicity is by ordering."""

    def __init__(self, uri: str, settings: S3Settings | None = None):
        self.bucket, prefix = split_s3_uri(uri)
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.settings = settings or S3Settings()
        self._client = None

    def __getstate__(self) -> dict:  # boto3 clients do not pickle; Ray workers build their own
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        if self._client is None:
            self._client = make_s3_client(self.settings)
        return self._client

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_new(self, key: str, data: bytes) -> bool:
        """Create `key` only if it does not exist: a conditional PUT (If-None-Match: *), which S3 and MinIO
        arbitrate; False when it exists. A server without conditional writes gets a plain PUT and a warning."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
        except self.client.exceptions.ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            if code != "NotImplemented":
                raise
            log.warning("%s has no conditional writes: concurrent publishers are not arbitrated", self.uri)
            if self.exists(key):
                return False
            self.put(key, data)
        return True

    def put_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key))

    def get(self, key: str) -> bytes:
        with self.open(key) as body:
            return body.read()

    def open(self, key: str) -> BinaryIO:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except self.client.exceptions.NoSuchKey:
            raise StoreError(f"no such object: {self.url(key)}") from None

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except self.client.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def size(self, key: str) -> int:
        return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix) + "/" if prefix else (self.prefix + "/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            keys.extend(item["Key"][strip:] for item in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list(prefix):
            self.delete(key)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


def read_parquet(store: ObjectStore, key: str, columns: list[str] | None = None) -> pa.Table:
    """Parquet needs random access; object bodies are streams, so read the (small) file whole first."""
    return pq.read_table(io.BytesIO(store.get(key)), columns=columns)


def open_store(uri: str | Path, s3: S3Settings | None = None) -> LocalStore | S3Store:
    """`s3://bucket/prefix` -> S3Store, anything else -> LocalStore."""
    if str(uri).startswith("s3://"):
        return S3Store(str(uri), s3)
    return LocalStore(uri)
