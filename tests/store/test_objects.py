"""The object-store interface, local and S3 (a real moto_server on 127.0.0.1): same behaviour, safe keys."""

from __future__ import annotations

import pytest

from curation.config import S3Settings
from curation.errors import StoreError, UnsafeKeyError
from curation.store.blobs import BlobStore, blob_key, image_id_of
from curation.store.objects import LocalStore, S3Store, check_key
from tests.conftest import S3_KEY_ID, S3_SECRET


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("bucket")
    settings = S3Settings(endpoint_url=endpoint, access_key_id=S3_KEY_ID, secret_access_key=S3_SECRET)
    return S3Store(f"s3://{bucket}/some/prefix", settings)


def test_put_get_list_exists_size(store, tmp_path):
    store.put("a/b/c.bin", b"hello")
    (tmp_path / "file.bin").write_bytes(b"0123456789")
    store.put_file("a/file.bin", tmp_path / "file.bin")
    assert store.get("a/b/c.bin") == b"hello"
    assert store.exists("a/file.bin") and not store.exists("a/nope")
    assert store.size("a/file.bin") == 10
    assert store.list("a") == ["a/b/c.bin", "a/file.bin"]
    with store.open("a/file.bin") as stream:
        assert stream.read() == b"0123456789"
    store.put("a/b/c.bin", b"replaced")
    assert store.get("a/b/c.bin") == b"replaced"
    store.delete_prefix("a/b")
    assert store.list("a") == ["a/file.bin"]
    with pytest.raises(StoreError, match="no such object"):
        store.get("a/b/c.bin")


@pytest.mark.parametrize("key", ["/etc/passwd", "../up", "a/../../b", "a//b", "", "a/./b", "a/b\x00c", "a\\b"])
def test_unsafe_keys_are_refused(store, key):
    with pytest.raises(UnsafeKeyError):
        store.put(key, b"x")
    with pytest.raises(UnsafeKeyError):
        check_key(key)


def test_local_put_leaves_no_temporary_files(tmp_path):
    store = LocalStore(tmp_path / "s")
    for index in range(5):
        store.put(f"k{index}", b"x" * index)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [f"k{i}" for i in range(5)]


def test_blob_store_is_content_addressed_and_idempotent(store):
    blobs = BlobStore(store)
    image_id = blobs.put(b"same bytes")
    assert image_id == image_id_of(b"same bytes") and blobs.put(b"same bytes") == image_id
    assert blobs.get(image_id) == b"same bytes"
    assert store.list() == [blob_key(image_id)] or store.list()[-1].endswith(image_id)


def test_s3_store_survives_pickling(s3_endpoint, bucket):
    import pickle

    settings = S3Settings(endpoint_url=s3_endpoint, access_key_id=S3_KEY_ID, secret_access_key=S3_SECRET)
    store = S3Store(f"s3://{bucket}", settings)
    store.put("x", b"1")  # builds a client
    clone = pickle.loads(pickle.dumps(store))
    assert clone.get("x") == b"1"


def test_put_new_creates_once(store):
    assert store.put_new("claims/v1", b"first")
    assert not store.put_new("claims/v1", b"second")
    assert store.get("claims/v1") == b"first"


def test_concurrent_claims_each_win_a_different_number(store):
    """Eight publishers of one name racing for the next version number: each gets its own (a conditional PUT on
    the real S3 server, O_EXCL locally), none is lost or shared."""
    from concurrent.futures import ThreadPoolExecutor

    from curation.publish.release import claim_number

    store.put_new("demo/.claims/v2", b"a publisher that died")
    with ThreadPoolExecutor(8) as pool:
        numbers = list(pool.map(lambda index: claim_number(store, "demo", 1, f"run {index}"), range(8)))
    assert sorted(numbers) == [1, 3, 4, 5, 6, 7, 8, 9]
