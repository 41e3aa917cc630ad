"""Local folder source on a real directory tree: listing, sidecars, unreadable and oversized files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from curation.config import FolderSource
from curation.errors import SpecError
from curation.ingest.folder import list_folder, read_files
from curation.ingest.raw import SIDECAR_MAX_BYTES
from curation.types import Reason
from tests.corpus import image_bytes

MAX_BYTES = 1 << 20


def folder(path: Path, **options) -> FolderSource:
    return FolderSource(kind="folder", name="local", path=path, **options)


def read(*paths: Path, max_bytes: int = MAX_BYTES):
    return list(read_files(tuple(str(path) for path in paths), max_bytes))


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "images"
    for relative in ["b.jpg", "a.PNG", "sub/c.JPG", "sub/deeper/d.jpeg", "sub/e.webp", "z.Jpg"]:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(len(relative)))
    (root / "notes.txt").write_text("not an image")
    (root / "b.json").write_text('{"license": "CC0"}')
    (root / "folder.jpg").mkdir()  # a directory with an image name is not an input
    return root


def test_listing_is_recursive_sorted_and_case_insensitive(root):
    expected = ["a.PNG", "b.jpg", "sub/c.JPG", "sub/deeper/d.jpeg", "sub/e.webp", "z.Jpg"]
    assert list_folder(folder(root)) == [str(root / name) for name in expected]


@pytest.mark.parametrize("extensions", [(".jpg",), (".JPG",)])
def test_extension_filter_ignores_case(root, extensions):
    assert list_folder(folder(root, extensions=extensions)) == [str(root / "b.jpg"), str(root / "sub/c.JPG"),
                                                                 str(root / "z.Jpg")]  # fmt: skip


def test_a_missing_folder_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="folder does not exist") as error:
        list_folder(folder(tmp_path / "absent"))
    assert "'local'" in str(error.value) and str(tmp_path / "absent") in str(error.value)


def test_a_file_given_as_the_folder_is_a_spec_error(tmp_path):
    path = tmp_path / "one.jpg"
    path.write_bytes(image_bytes(1))
    with pytest.raises(SpecError, match="folder does not exist"):
        list_folder(folder(path))


def test_files_are_read_with_their_sidecar_fields(tmp_path):
    image = tmp_path / "x.jpg"
    image.write_bytes(image_bytes(5))
    (tmp_path / "x.json").write_text(
        '{"license": "CC-BY-4.0", "caption": "a cat", "attribution": {"name": "Ann"}, "width": 3, "extra": "no"}'
    )
    bare = tmp_path / "y.png"
    bare.write_bytes(image_bytes(6, fmt="PNG"))
    x, y = read(image, bare)
    assert x.uri == str(image) and x.data == image_bytes(5) and x.reason is None and x.detail is None
    assert x.meta == {"license": "CC-BY-4.0", "caption": "a cat", "attribution": '{"name": "Ann"}'}
    assert y.uri == str(bare) and y.data == image_bytes(6, fmt="PNG") and y.meta == {} and y.detail is None


@pytest.mark.parametrize(
    ("sidecar", "problem"),
    [
        (b'{"license": "CC0",', "not JSON"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        (b'["CC0"]', "not a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_a_malformed_sidecar_is_ignored_and_the_image_still_read(tmp_path, sidecar, problem):
    image = tmp_path / "x.jpg"
    image.write_bytes(image_bytes(5))
    (tmp_path / "x.json").write_bytes(sidecar)
    (result,) = read(image)
    assert result.data == image_bytes(5)
    assert result.reason is None
    assert result.meta == {}
    assert result.detail.startswith("sidecar ignored") and problem in result.detail


def test_an_oversized_sidecar_is_ignored(tmp_path):
    image = tmp_path / "x.jpg"
    image.write_bytes(image_bytes(5))
    (tmp_path / "x.json").write_bytes(b'{"license": "CC0", "pad": "' + b"x" * SIDECAR_MAX_BYTES + b'"}')
    (result,) = read(image)
    assert result.data == image_bytes(5)
    assert result.meta == {}
    assert result.detail.startswith("sidecar ignored: larger than")


def test_a_dangling_symlink_is_listed_and_read_failed(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "good.jpg").write_bytes(image_bytes(1))
    (root / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    listed = list_folder(folder(root))
    assert listed == [str(root / "gone.jpg"), str(root / "good.jpg")]
    gone, good = read(*map(Path, listed))
    assert gone.reason == Reason.READ_FAILED and gone.data is None and gone.detail
    assert good.reason is None and good.data == image_bytes(1)


def test_a_missing_file_is_read_failed(tmp_path):
    (result,) = read(tmp_path / "vanished.jpg")
    assert result.reason == Reason.READ_FAILED
    assert "No such file" in result.detail


def test_a_directory_behind_an_image_name_is_read_failed(tmp_path):
    target = tmp_path / "a-directory"
    target.mkdir()
    (tmp_path / "dir.jpg").symlink_to(target)
    (result,) = read(tmp_path / "dir.jpg")
    assert result.reason == Reason.READ_FAILED and result.data is None


@pytest.mark.timeout(5)
def test_a_fifo_behind_an_image_name_is_read_failed_without_blocking(tmp_path):
    """Opening a FIFO for reading blocks until a writer comes; a source must never wait on one."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "pipe.jpg").symlink_to(fifo)
    (result,) = read(tmp_path / "pipe.jpg")
    assert result.reason == Reason.READ_FAILED
    assert "not a regular file" in result.detail


@pytest.mark.timeout(5)
def test_a_fifo_swapped_in_after_the_listing_is_judged_on_the_open_file(tmp_path, monkeypatch):
    """A check by name can be raced (a regular file when looked at, a FIFO when opened); the reader judges the
    descriptor it opened. Here every look by name lies and says "regular file", as a lost race would."""
    regular = tmp_path / "regular.bin"
    regular.write_bytes(b"x")
    looks_regular = os.stat(regular)
    monkeypatch.setattr(Path, "stat", lambda self, **kwargs: looks_regular)
    os.mkfifo(tmp_path / "swapped.jpg")
    (result,) = read(tmp_path / "swapped.jpg")
    assert result.reason == Reason.READ_FAILED
    assert "not a regular file" in result.detail


@pytest.mark.timeout(5)
def test_a_fifo_sidecar_is_ignored_with_a_reason_without_blocking(tmp_path):
    image = tmp_path / "photo.jpg"
    image.write_bytes(b"not checked here")
    os.mkfifo(tmp_path / "photo.json")
    (result,) = read(image)
    assert result.data == b"not checked here"
    assert result.detail == "sidecar ignored: not a regular file"


def test_a_file_over_max_bytes_is_too_large_without_reading(tmp_path):
    huge = tmp_path / "huge.jpg"
    with huge.open("wb") as handle:
        handle.truncate(64 * 2**30)  # sparse: 64 GiB by size, nothing on disk; reading it whole could not succeed
    exact = tmp_path / "exact.jpg"
    exact.write_bytes(b"\xff" * 1000)
    over = tmp_path / "over.jpg"
    over.write_bytes(b"\xff" * 1001)
    huge_row, exact_row, over_row = read(huge, exact, over, max_bytes=1000)
    assert huge_row.reason == Reason.TOO_LARGE and huge_row.data is None
    assert huge_row.detail == f"{64 * 2**30} bytes > max_bytes 1000"  # the size came from stat, not a read
    assert exact_row.reason is None and exact_row.data == b"\xff" * 1000
    assert over_row.reason == Reason.TOO_LARGE and over_row.data is None
