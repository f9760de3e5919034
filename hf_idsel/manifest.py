"""Manifest: a JSON record that describes a selection completely, and rebuilds it from the pool.

A manifest holds the pool's fingerprint, size and content digest, the encoder, the rendering
options, the method and every parameter, the seed, k and how it was chosen, the cluster sizes,
the selected row ids with their digest, and the library versions. `load_selection` rebuilds the
identical subset from it, and refuses a pool whose content differs.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import datasets
import numpy as np

from .errors import InvalidArgumentError, SelectionMismatchError

FORMAT_VERSION = 1
_VERSIONED_PACKAGES = (
    "hf_idsel", "datasets", "numpy", "faiss-cpu", "faiss-gpu", "sentence-transformers", "transformers", "torch",
)
_DIGEST_BATCH = 10_000


def indices_digest(indices) -> str:
    """sha256 of the selected row ids, in pool order."""
    ids = np.sort(np.asarray(indices, dtype=np.int64))
    return "sha256:" + hashlib.sha256(ids.astype("<i8").tobytes()).hexdigest()


def pool_digest(dataset: datasets.Dataset, columns: list[str]) -> str:
    """sha256 of the content of `columns` (the ones the selection reads), independent of file layout."""
    from .embed import column_matrix

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
            values = column.slice(start, _DIGEST_BATCH).to_pylist()
            digest.update(json.dumps(values, sort_keys=True, ensure_ascii=False, default=str).encode())
    return "sha256:" + digest.hexdigest()


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


def pool_record(pool: datasets.Dataset, columns: list[str], *, name: str | None = None, source: dict | None = None) -> dict:
    """The manifest's `pool` entry: fingerprint, size, content digest of `columns`, name and (when known) source."""
    columns = list(dict.fromkeys(columns))
    record = {
        "fingerprint": pool._fingerprint,
        "num_rows": len(pool),
        "digest": pool_digest(pool, columns),
        "digest_columns": columns,
        "name": name or pool_name(pool),
    }
    if source is not None:
        record["source"] = source
    return record


def encoder_record(identity, embedding_column: str | None, dim: int) -> dict:
    """The manifest's `encoder` entry: the encoder's id and revision, or the column the vectors came from."""
    if identity is not None:
        return {"id": identity.id, "revision": identity.revision, "dim": int(dim)}
    return {"embedding_column": embedding_column, "dim": int(dim)}


def selection_subset(pool: datasets.Dataset, indices, clusters, **extra_columns) -> datasets.Dataset:
    """The selected rows with every pool column plus `source_index`, `cluster` and any `extra_columns`."""
    indices = list(indices)
    subset = pool.select(indices)
    subset = subset.add_column("source_index", indices)
    subset = subset.add_column("cluster", list(clusters))
    for name, values in extra_columns.items():
        subset = subset.add_column(name, list(values))
    return subset


def library_versions() -> dict:
    versions = {}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


@dataclass
class Manifest:
    """Everything needed to rebuild a selection. Saved as JSON (`save`), read back with `load`.

    Args:
        pool (`dict`):
            `fingerprint`, `num_rows`, `digest` and `digest_columns` of the pool, plus its `name` when known.
        arguments (`dict`):
            The `diverse_select` arguments that produced the selection (JSON values only).
        method (`str`):
            Selection method.
        seed (`int`):
            Random seed.
        k (`int`):
            Number of clusters.
        k_selection (`dict`):
            `{"mode": "fixed"}` or `{"mode": "auto", "candidates": [...], "silhouette": {k: score}}`.
        render (`dict`, *optional*):
            Rendering options (absent when embeddings came from a column).
        encoder (`dict`, *optional*):
            `{"id", "revision", "dim"}` of the encoder, or `{"embedding_column", "dim"}`.
        budget (`dict`):
            `requested`, `rows` and, for token budgets, `max_tokens`, `tokens`, `tokenizer`.
        cluster_sizes (`list[int]`):
            Rows per cluster in the pool.
        selected_per_cluster (`list[int]`):
            Rows chosen per cluster.
        selected_indices (`list[int]`):
            The chosen pool rows, ascending.
        selected_clusters (`list[int]`):
            Their cluster ids, aligned with `selected_indices`.
        selected_digest (`str`):
            [`indices_digest`] of `selected_indices`.
        dedup (`dict`, *optional*):
            `{"threshold", "removed"}` when semantic de-duplication ran.
        versions (`dict`):
            Library versions that made the selection.
    """

    pool: dict
    arguments: dict
    method: str
    seed: int
    k: int
    k_selection: dict
    budget: dict
    cluster_sizes: list
    selected_per_cluster: list
    selected_indices: list
    selected_clusters: list
    selected_digest: str
    render: dict | None = None
    encoder: dict | None = None
    dedup: dict | None = None
    versions: dict = field(default_factory=library_versions)
    created_at: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat())
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def save(self, path: str) -> str:
        """Write the manifest as JSON to `path` (a file, or a folder that gets `manifest.json`)."""
        if os.path.isdir(path):
            path = os.path.join(path, "manifest.json")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json())
        return path

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        known = {f.name for f in fields(cls)}
        version = data.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise InvalidArgumentError(
                f"This manifest has format_version {version}; this hf_idsel reads up to {FORMAT_VERSION}. Upgrade hf_idsel."
            )
        required = [f.name for f in fields(cls) if f.name not in data and _is_required(f)]
        if required:
            raise InvalidArgumentError(f"Not an hf_idsel manifest: missing fields {required}.")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, source: Any) -> "Manifest":
        """Read a manifest from a `Manifest`, a dict, a JSON string, a JSON file or a folder holding `manifest.json`."""
        if isinstance(source, Manifest):
            return source
        if isinstance(source, dict):
            return cls.from_dict(source)
        if not isinstance(source, (str, os.PathLike)):
            raise InvalidArgumentError(f"`manifest` must be a path, a dict or a Manifest, got {type(source).__name__}.")
        source = os.fspath(source)
        if source.lstrip().startswith("{"):
            return cls.from_dict(json.loads(source))
        path = os.path.join(source, "manifest.json") if os.path.isdir(source) else source
        if not os.path.isfile(path):
            raise InvalidArgumentError(f"`manifest`={source!r}: no such file (expected a manifest.json).")
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def check_integrity(self) -> None:
        """Refuse a manifest whose selected ids do not match their recorded digest."""
        if indices_digest(self.selected_indices) != self.selected_digest:
            raise SelectionMismatchError(
                "The manifest's selected_indices do not match its selected_digest: the file was edited or is corrupt."
            )

    def check_pool(self, pool: datasets.Dataset) -> None:
        """Refuse a pool whose size or content differs from the one the selection was made on."""
        expected = self.pool
        if len(pool) != expected["num_rows"]:
            raise SelectionMismatchError(
                f"The pool has {len(pool)} rows but the selection was made on {expected['num_rows']} rows "
                f"(pool {expected.get('name') or expected['fingerprint']}). Pass the same pool."
            )
        missing = [c for c in expected["digest_columns"] if c not in pool.column_names]
        if missing:
            raise SelectionMismatchError(f"The pool lacks columns {missing} that the selection was made from.")
        digest = pool_digest(pool, expected["digest_columns"])
        if digest != expected["digest"]:
            raise SelectionMismatchError(
                f"The pool's content differs from the one the selection was made on (columns "
                f"{expected['digest_columns']}: digest {digest[:19]}... != {expected['digest'][:19]}...). "
                "Pass the same pool, unchanged and in the same row order."
            )


def _is_required(f) -> bool:
    return f.default is MISSING and f.default_factory is MISSING
