"""Content digests of pools, columns and selections: what a manifest records and `load_selection` checks.

sha256 over a canonical byte form: JSON for scalar values; for vector columns the list lengths, null flags and values
as little-endian float64; read in batches so that no column is held whole. A checksum, not a signature.
"""

from __future__ import annotations

import hashlib
import json

import datasets
import numpy as np

_DIGEST_BATCH = 10_000


def indices_digest(indices) -> str:
    """sha256 of the selected row ids, in pool order."""
    ids = np.sort(np.asarray(indices, dtype=np.int64))
    return "sha256:" + hashlib.sha256(ids.astype("<i8").tobytes()).hexdigest()


def clusters_digest(indices, clusters) -> str:
    """sha256 of the selected row ids together with their cluster ids, in the order given."""
    pairs = np.stack([np.asarray(indices, dtype=np.int64), np.asarray(clusters, dtype=np.int64)]).astype("<i8")
    digest = hashlib.sha256(json.dumps({"rows": int(pairs.shape[1])}).encode())
    digest.update(pairs.tobytes())
    return "sha256:" + digest.hexdigest()


def pool_digest(dataset: datasets.Dataset, columns: list[str]) -> str:
    """sha256 of the content of `columns` (the ones the selection reads), independent of file layout."""
    from .embed import column_matrix

    dataset = _flat(dataset)
    digest = hashlib.sha256()
    digest.update(json.dumps({"rows": len(dataset), "columns": sorted(columns)}).encode())
    table = dataset.data.table
    for name in sorted(columns):
        column = table.column(name)
        if _is_vector_column(column.type):
            for start in range(0, len(dataset), _DIGEST_BATCH * 10):
                block = column_matrix(table.slice(start, _DIGEST_BATCH * 10), name)
                digest.update(np.ascontiguousarray(block, dtype="<f4").tobytes())
            continue
        for start in range(0, len(dataset), _DIGEST_BATCH):
            digest.update(_json_bytes(column.slice(start, _DIGEST_BATCH)))
    return "sha256:" + digest.hexdigest()


def column_digests(dataset: datasets.Dataset, columns: list[str] | None = None) -> dict[str, str]:
    """sha256 of each column's content (every column by default), exact and independent of file layout.

    Float vectors are hashed as float64 values (exact for float32 and float64 alike) with their lengths
    and missing values; every other column as the JSON of its values.
    """
    dataset = _flat(dataset)
    table = dataset.data.table
    digests = {}
    for name in dataset.column_names if columns is None else columns:
        column = table.column(name)
        digest = hashlib.sha256(json.dumps({"rows": len(dataset), "column": name}).encode())
        vectors = _is_vector_column(column.type)
        for start in range(0, len(dataset), _DIGEST_BATCH):
            block = column.slice(start, _DIGEST_BATCH)
            digest.update(_vector_bytes(block) if vectors else _json_bytes(block))
        digests[name] = "sha256:" + digest.hexdigest()
    return digests


def _json_bytes(block) -> bytes:
    return json.dumps(block.to_pylist(), sort_keys=True, ensure_ascii=False, default=str).encode()


def _vector_bytes(block) -> bytes:
    import pyarrow.compute as pc

    array = block.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(array), -1).to_numpy(zero_copy_only=False).astype("<i8")
    values = array.flatten()
    missing = values.is_null().to_numpy(zero_copy_only=False).astype(np.uint8)
    numbers_ = np.asarray(values.to_numpy(zero_copy_only=False), dtype="<f8")
    return lengths.tobytes() + missing.tobytes() + numbers_.tobytes()


def _flat(dataset: datasets.Dataset) -> datasets.Dataset:
    # Digests read the Arrow table in storage order: a select/shuffle view is materialised first.
    return dataset.flatten_indices() if dataset._indices is not None else dataset


def _is_vector_column(arrow_type) -> bool:
    import pyarrow as pa

    if not (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)):
        return False
    return pa.types.is_floating(arrow_type.value_type)


def pool_name(pool: datasets.Dataset) -> str | None:
    """The pool's dataset name (`name/config` for a non-default config), when `datasets` knows it."""
    info = pool.info
    name = getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)
    config = getattr(info, "config_name", None)
    if name and config and config != "default":
        return f"{name}/{config}"
    return name
