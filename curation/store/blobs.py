"""Content-addressed image bytes: key = SHA-256 of the original bytes, so the same image is stored once."""

from __future__ import annotations

import hashlib

from curation.errors import StoreError
from curation.store.objects import ObjectStore


def image_id_of(data: bytes) -> str:
    """The project's content address: SHA-256 hex of the original bytes."""
    return hashlib.sha256(data).hexdigest()


def blob_key(image_id: str) -> str:
    """256 fan-out folders (as git does): few enough that a folder rarely needs creating."""
    return f"{image_id[:2]}/{image_id}"


class BlobStore:
    def __init__(self, objects: ObjectStore):
        self.objects = objects

    def put(self, data: bytes, image_id: str | None = None) -> str:
        """Store `data` once; returns its image id. Re-putting known bytes costs one existence check."""
        image_id = image_id or image_id_of(data)
        key = blob_key(image_id)
        if not self.objects.exists(key):
            self.objects.put(key, data)
        return image_id

    def get(self, image_id: str) -> bytes:
        return self.objects.get(blob_key(image_id))

    def get_verified(self, image_id: str) -> bytes:
        """The bytes, checked against their address (what is published must be what was read). A blob that
        does not match (disk rot, a hand edit) is removed, since `put` never overwrites a key it finds."""
        data = self.get(image_id)
        found = image_id_of(data)
        if found != image_id:
            self.objects.delete(blob_key(image_id))
            raise StoreError(f"stored bytes of image {image_id} are corrupt (they hash to {found}); the blob was "
                             "removed: run again with --fresh to read the image from its source")  # fmt: skip
        return data
