"""Vector storage: per-block float16 .npy files with a Parquet index, keyed by (image id, model id).

    HOME/vectors/MODELKEY/model.json                 the model id and dimension
    HOME/vectors/MODELKEY/RUN-BLOCK.npy              [n, dim] float16, L2-normalised rows
    HOME/vectors/MODELKEY/RUN-BLOCK.parquet          image_id, row (-1 when the embedder failed), error

Workers write these; the driver records them in the catalog's `embeddings` table, which is what makes an image
embedded once per model across runs and pools. `load_matrix` gathers any set of ids into one memory-mapped
matrix for the FAISS stages.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import StoreError
from curation.store.catalog import Catalog
from curation.store.objects import LocalStore, ObjectStore, read_parquet

INDEX_SCHEMA = pa.schema([("image_id", pa.string()), ("row", pa.int32()), ("error", pa.string())])


def model_key(model_id: str) -> str:
    """A store-safe folder name for a model id (ids hold ':' and '@')."""
    return hashlib.sha256(model_id.encode()).hexdigest()[:16]


def block_keys(model_id: str, run_id: str, block: int) -> tuple[str, str]:
    base = f"{model_key(model_id)}/{run_id}-{block:06d}"
    return f"{base}.npy", f"{base}.parquet"


def write_block(store: ObjectStore, model_id: str, dim: int, run_id: str, block: int, image_ids: list[str],
                vectors: np.ndarray, errors: list[str | None]) -> int:  # fmt: skip
    """Store the successful rows as float16 and an index of all rows; returns how many were embedded. A row the
    model made non-finite or (near) zero is that image's failure: one NaN vector would pull every k-means
    centroid it touches to NaN and every later search with it."""
    usable = np.isfinite(vectors).all(axis=1) & (np.linalg.norm(np.nan_to_num(vectors), axis=1) > 0.5)
    errors = [error if error is not None or usable[index] else "the model gave a non-finite or zero vector"
              for index, error in enumerate(errors)]  # fmt: skip
    ok = [index for index, error in enumerate(errors) if error is None]
    rows = np.full(len(image_ids), -1, np.int32)
    rows[ok] = np.arange(len(ok), dtype=np.int32)
    buffer = io.BytesIO()
    np.save(buffer, vectors[ok].astype(np.float16).reshape(len(ok), dim))
    npy_key, index_key = block_keys(model_id, run_id, block)
    store.put(npy_key, buffer.getvalue())
    description = f"{model_key(model_id)}/model.json"
    if not store.exists(description):
        store.put(description, json.dumps({"model_id": model_id, "dim": dim}).encode())
    index = pa.table({"image_id": image_ids, "row": rows, "error": errors}, schema=INDEX_SCHEMA)
    sink = io.BytesIO()
    pq.write_table(index, sink)
    store.put(index_key, sink.getvalue())  # written last: the block's completion marker
    return len(ok)


def read_block_index(store: ObjectStore, model_id: str, run_id: str, block: int) -> pa.Table:
    return read_parquet(store, block_keys(model_id, run_id, block)[1])


def load_matrix(catalog: Catalog, store: LocalStore, model_id: str, image_ids: list[str]) -> np.ndarray:
    """One read-only memory-mapped float16 [len(image_ids), dim] matrix, rows in the order of `image_ids`.

    Built once per distinct id list (cached as matrix-HASH.npy beside the blocks). Unknown ids are a KeyError.
    """
    ids_hash = hashlib.sha256("\n".join(image_ids).encode()).hexdigest()[:16]
    path = store.root / model_key(model_id) / f"matrix-{ids_hash}.npy"
    dim = json.loads(store.get(f"{model_key(model_id)}/model.json"))["dim"]
    if path.exists():
        if damage(path, dim, len(image_ids)) is None:
            return np.load(path, mmap_mode="r")
        path.unlink()  # a damaged cache of gathered rows is simply gathered again
    located = catalog.embedding_locations(model_id, image_ids)
    missing = [image_id for image_id in image_ids if image_id not in located]
    if missing:
        raise KeyError(f"{len(missing)} image(s) have no {model_id} vector, e.g. {missing[0]}")
    temporary = path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp.npy")  # concurrent builders: one each
    matrix = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float16, shape=(len(image_ids), dim))
    by_file: dict[str, list[tuple[int, int]]] = {}
    for position, image_id in enumerate(image_ids):
        file, row = located[image_id]
        by_file.setdefault(file, []).append((position, row))
    for file, pairs in by_file.items():
        positions, rows = zip(*pairs)
        if problem := damage(store.root / file, dim, max(rows) + 1):
            Path(temporary).unlink()
            raise StoreError(f"{store.root / file}: damaged vectors file ({problem}); the next `curate run` with "
                             "this embedder embeds its images again")  # fmt: skip
        block = np.load(store.root / file, mmap_mode="r")
        matrix[list(positions)] = block[list(rows)]
    matrix.flush()
    del matrix
    Path(temporary).replace(path)
    return np.load(path, mmap_mode="r")


def damage(path: Path, dim: int, rows: int) -> str | None:
    """What is wrong with a vectors file that should hold at least `rows` float16 rows of `dim` (missing,
    truncated, not .npy, other shape), or None: checked from its header, without reading the rows."""
    try:
        matrix = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as error:
        return f"{type(error).__name__}: {error}"
    if matrix.dtype != np.float16 or matrix.ndim != 2 or matrix.shape[1] != dim or len(matrix) < rows:
        return f"{matrix.dtype} {matrix.shape}, not at least [{rows}, {dim}] float16"
    return None


def forget_damaged(catalog: Catalog, store: LocalStore, model_id: str) -> set[str]:
    """Image ids whose cached vectors lay in a damaged file: their cache rows, the file and its block index go (a
    run's own block is then undone, so its resume redoes it), and they are embedded again instead of failing
    every later stage that reads them."""
    files = catalog.embedding_files(model_id)
    if not files:
        return set()
    dim = json.loads(store.get(f"{model_key(model_id)}/model.json"))["dim"]
    damaged = [file for file, rows in files.items() if damage(store.root / file, dim, rows)]
    if not damaged:
        return set()
    forgotten = catalog.forget_embeddings(model_id, damaged)
    for file in damaged:
        for path in (store.root / file, (store.root / file).with_suffix(".parquet")):
            path.unlink(missing_ok=True)
    return forgotten


def matrix_path(matrix: np.ndarray, what: str) -> str:
    """Where `matrix` (load_matrix's memory-mapped file) lies, for Ray workers that open it by path themselves;
    anything else is a TypeError naming `what` needed it."""
    if not isinstance(matrix, np.memmap):
        raise TypeError(f"{what} reads the vectors by path: pass the memory-mapped matrix load_matrix returns")
    return str(matrix.filename)
