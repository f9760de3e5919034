"""Manifest: a JSON record that describes a selection completely, and rebuilds it from the pool.

A manifest holds the pool's fingerprint, size and content digests, the encoder, the rendering
options, the method and every parameter, the seed, k and how it was chosen, the cluster sizes,
the selected row ids and their cluster ids with their digests, each cluster described in words
(optional: its distinctive terms and most representative rows), and the library versions.
`load_selection` rebuilds the identical subset from it, and refuses a pool whose content differs.

What the digests cover (format_version 2):

- `pool.digest`: the content of the columns the selection read (`pool.digest_columns`) over the
  whole pool, and its row count;
- `pool.column_digests`: the content of every column of the pool, one digest per column, so that
  each column `load_selection` returns is checked and a changed one is named;
- `selected_digest`: the selected row ids; `clusters_digest`: the row ids with their cluster ids, in
  the manifest's order.

Manifests of format_version 1 (written before the column and cluster digests) are still read: their
`pool.digest` covers only the columns the selection read, and nothing covers `selected_clusters`
beyond the structural checks (ids in `[0, k)`, counts that agree with `selected_per_cluster`);
what cannot be verified is logged as a warning. A digest is a checksum, not a signature: it catches
a corrupt file or an edit of one field, not someone who edits a field and its digest together.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import math
import numbers
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import datasets
import numpy as np

from .cluster import K_RULES, local_maxima, near_ties, seed_spread
from .digests import clusters_digest, column_digests, indices_digest, pool_digest, pool_name
from .errors import InvalidArgumentError, SelectionMismatchError
from .pool import pool_source

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
# format_version 1: `pool.column_digests` and `clusters_digest` did not exist yet.
_FIRST_VERSION_WITH_COLUMN_DIGESTS = 2
# Fields that no format_version 1 writer ever wrote (they came with version 2 or later).
_FIELDS_AFTER_VERSION_1 = ("clusters_digest", "decontamination", "cluster_map", "cluster_descriptions", "target")
_VERSIONED_PACKAGES = (
    "hf_idsel", "datasets", "numpy", "faiss-cpu", "faiss-gpu", "sentence-transformers", "transformers", "torch",
)
_MAX_ROWS = 2**62  # bound on a manifest's row counts and ids, so that they fit int64 arrays
_MAX_DEPTH = 16  # a manifest nests 5 levels deep (k_selection.seed_check.silhouette.<k>)
_BUDGET_NUMBERS = ("requested", "rows", "max_tokens", "tokens", "total_rows", "round")


def pool_record(pool: datasets.Dataset, columns: list[str], *, name: str | None = None, source: dict | None = None) -> dict:
    """The manifest's `pool` entry: fingerprint, size, content digest of `columns` (the ones the selection
    read), a digest of every column (`column_digests`), name and (when known) source.

    The source is the reference that builds the pool again ([`pool.pool_source`]: the built-in pool's recipe, a Hub
    dataset's id, config, split and revision, a local file's path, and a sample's size and seed) when this process
    built `pool`; else `source` as given. A given `source` naming another `path` than the pool was built from wins
    (a Hub id given for a local copy of it)."""
    built = pool_source(pool)
    if built is not None and (source is None or source.get("path") == built["path"]):
        source = built
    columns = list(dict.fromkeys(columns))
    record = {
        "fingerprint": pool._fingerprint,
        "num_rows": len(pool),
        "digest": pool_digest(pool, columns),
        "digest_columns": columns,
        "column_digests": column_digests(pool),
        "name": name or pool_name(pool),
    }
    if source is not None:
        record["source"] = source
    return record


def encoder_record(identity, embedding_column: str | None, dim: int) -> dict:
    """The manifest's `encoder` entry: the encoder's id and revision, or the column the vectors came from."""
    if identity is not None:
        # A hidden-state encoder adds its layer, pooling, max_length and projection.
        return {"id": identity.id, "revision": identity.revision, "dim": int(dim), **dict(getattr(identity, "settings", ()))}
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


def library_versions(extra: tuple[str, ...] = ()) -> dict:
    """Installed versions of the packages that shape a selection, and of `extra` ones; missing ones are left out."""
    versions = {}
    for name in _VERSIONED_PACKAGES + tuple(extra):
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
            `fingerprint`, `num_rows`, `digest` and `digest_columns` of the pool (the content of the
            columns the selection read), `column_digests` (the content of every column), plus its
            `name` and `source` when known: the reference that builds the pool again (string values; see
            [`pool.pool_source`]), or as published, a local file's `file` name and content `digest`.
        arguments (`dict`):
            The `diverse_select` arguments that produced the selection (JSON values only).
        method (`str`):
            Selection method.
        seed (`int`):
            Random seed.
        k (`int`):
            Number of clusters.
        k_selection (`dict`):
            `{"mode": "fixed"}` or `{"mode": "auto", "candidates": [...], "silhouette": {k: score}}`; since k="auto"
            judges the whole pool's clustering it also holds `"chosen"`, `"standard_error"` (`{k: error}`),
            `"grid"`, `"search"` and `"estimator"` (the silhouette's settings); since it follows the paper's range,
            `"rule"`, `"best"`, `"local_maxima"`, `"budget"`, `"range"` and, for the rule "paper", `"seed_check"`
            and `"ties"` (see [`cluster.KSelection.record`]).
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
        clusters_digest (`str`, *optional*):
            [`clusters_digest`] of `selected_indices` with `selected_clusters`; computed when not given.
            `None` only in manifests of format_version 1.
        render (`dict`, *optional*):
            Rendering options (absent when embeddings came from a column).
        encoder (`dict`, *optional*):
            `{"id", "revision", "dim"}` of the encoder, or `{"embedding_column", "dim"}`.
        dedup (`dict`, *optional*):
            `{"threshold", "removed"}` when semantic de-duplication ran.
        decontamination (`dict`, *optional*):
            When `diverse_select(..., exclude=...)` dropped pool rows matching an evaluation set before clustering: the
            evaluation set (`exclude`: name, fingerprint, rows), the thresholds, `removed` and `removed_indices` (pool
            rows, ascending) with, per row, the evaluation item it matched and its n-gram share and cosine (see
            [`decontaminate.decontaminate`]). `cluster_sizes` then count the rows left. `None` in manifests written
            before hf_idsel decontaminated, or when nothing was excluded.
        cluster_map (`list[list[float]]`, *optional*):
            One `[x, y]` per cluster: its centroid on a 2-D map of the pool (see [`pipeline.centroid_map`]), for
            [`report.plot_cluster_map`]. For readers, covered by no digest; `None` in manifests written before.
        cluster_descriptions (`list[dict]`, *optional*):
            One `{"terms", "examples", "example_rows"}` per cluster (see [`describe.describe_clusters`]): its
            most distinctive words and the rows nearest its centroid, shortened. Text for readers, covered by
            no digest; `None` in manifests written before hf_idsel described clusters, or when the rows had no
            text to describe.
        target (`dict`, *optional*):
            When the selection was aimed at a target (`target_dataset`, see [`target`]): the examples (`name`,
            `fingerprint`, `num_rows`, `digest` of their content), how they were read and used (`render`, `method`,
            `sharpness`, `task_column`, `tasks`) and each cluster's `cluster_affinity`. `None` otherwise.
        versions (`dict`):
            Library versions that made the selection.
        created_at (`str`):
            When the selection was made (ISO 8601, UTC).
        format_version (`int`, *optional*, defaults to `FORMAT_VERSION`):
            Version of this layout; 1 is the layout without `column_digests` and `clusters_digest`.
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
    clusters_digest: str | None = None
    render: dict | None = None
    encoder: dict | None = None
    dedup: dict | None = None
    decontamination: dict | None = None
    cluster_map: list | None = None
    cluster_descriptions: list | None = None
    target: dict | None = None
    versions: dict = field(default_factory=library_versions)
    created_at: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat())
    format_version: int = FORMAT_VERSION

    # How error messages name this manifest (its file, or the Hub repo and file); not a field.
    origin = "the manifest"

    def __post_init__(self):
        if self.clusters_digest is None and self.format_version >= _FIRST_VERSION_WITH_COLUMN_DIGESTS:
            self.clusters_digest = clusters_digest(self.selected_indices, self.selected_clusters)

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
    def from_dict(cls, data: dict, *, origin: str | None = None) -> "Manifest":
        """Build a manifest from its JSON dict, refusing a malformed one.

        Args:
            data (`dict`):
                The manifest's fields.
            origin (`str`, *optional*):
                How errors name the manifest (e.g. its path); defaults to `"the manifest"`.

        Raises:
            [`InvalidArgumentError`]: a field is missing, of the wrong type, out of range or inconsistent
                with another field; the message names the field.
        """
        origin = origin or cls.origin
        check_fields(data, origin)
        known = {f.name for f in fields(cls)} - {"format_version"}
        # A dict without `format_version` is read as version 1, the one that requires the fewest digests.
        manifest = cls(**{k: v for k, v in data.items() if k in known}, format_version=data.get("format_version", 1))
        manifest.origin = origin
        return manifest

    @classmethod
    def load(cls, source: Any, *, origin: str | None = None) -> "Manifest":
        """Read a manifest from a `Manifest`, a dict, a JSON string, a JSON file or a folder holding `manifest.json`.

        Args:
            source (`Manifest`, `dict`, `str` or `os.PathLike`):
                The manifest, its fields, its JSON text, or the path of its file or folder.
            origin (`str`, *optional*):
                How errors name the manifest; defaults to its path (or "the manifest").

        Raises:
            [`InvalidArgumentError`]: no such file, not JSON, or not a valid manifest; the message names
                the file and what is wrong.
        """
        if isinstance(source, Manifest):
            return source
        if isinstance(source, dict):
            return cls.from_dict(source, origin=origin)
        if not isinstance(source, (str, os.PathLike)):
            raise InvalidArgumentError(f"`manifest` must be a path, a dict or a Manifest, got {type(source).__name__}.")
        source = os.fspath(source)
        if not isinstance(source, str):
            raise InvalidArgumentError(f"`manifest` must be a path, a dict or a Manifest, got {type(source).__name__}.")
        if source.lstrip().startswith("{"):
            origin = origin or "the manifest JSON text"
            return cls.from_dict(_parse_json(source, origin), origin=origin)
        path = os.path.join(source, "manifest.json") if os.path.isdir(source) else source
        origin = origin or f"manifest {path!r}"
        if not os.path.isfile(path):
            raise InvalidArgumentError(
                f"`manifest`={source!r}: no such local file (expected a manifest.json, or a folder holding one). "
                "Check the path."
            )
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as err:
            raise InvalidArgumentError(f"Could not read {origin}: {err.strerror or err}.") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidArgumentError(
                f"{origin} is not UTF-8 text (byte {err.start}): not an hf_idsel manifest, or a corrupt one."
            ) from None
        return cls.from_dict(_parse_json(text, origin), origin=origin)

    def check_integrity(self) -> None:
        """Refuse a malformed manifest, or one whose selected ids or cluster ids do not match their digests.

        Raises:
            [`InvalidArgumentError`]: a field is malformed (see [`check_fields`]).
            [`SelectionMismatchError`]: `selected_indices` or `selected_clusters` differ from their digests.
        """
        check_fields(self.to_dict(), self.origin)
        if indices_digest(self.selected_indices) != self.selected_digest:
            raise SelectionMismatchError(
                f"The selected_indices of {self.origin} do not match its selected_digest: the file was edited or "
                "is corrupt. Use the manifest as written by hf_idsel."
            )
        if self.clusters_digest is not None and (
            clusters_digest(self.selected_indices, self.selected_clusters) != self.clusters_digest
        ):
            raise SelectionMismatchError(
                f"The selected_clusters of {self.origin} do not match its clusters_digest: the file was edited or "
                "is corrupt. Use the manifest as written by hf_idsel."
            )

    def check_pool(self, pool: datasets.Dataset) -> None:
        """Refuse a pool whose size or content differs from the one the selection was made on.

        Checks the row count, and the content of the columns the selection read over the whole pool. For a
        manifest with `column_digests` (format_version 2), also every column of `pool`: a column that changed,
        or one the manifest does not record, is refused by name. A recorded column the selection did not read
        may be left out of `pool` (the subset then lacks it). A manifest of format_version 1 records no digest
        of the other columns: they are returned with a logged warning that names them.

        Raises:
            [`SelectionMismatchError`]: the pool differs; the message names what changed and the fix.
        """
        expected = self.pool
        if len(pool) != expected["num_rows"]:
            raise SelectionMismatchError(
                f"The pool has {len(pool)} rows but the selection of {self.origin} was made on "
                f"{expected['num_rows']} rows (pool {expected.get('name') or expected['fingerprint']}). "
                "Pass the same pool."
            )
        missing = [c for c in expected["digest_columns"] if c not in pool.column_names]
        if missing:
            raise SelectionMismatchError(
                f"The pool lacks columns {missing} that the selection of {self.origin} was made from. "
                "Pass the same pool."
            )
        recorded = expected.get("column_digests")
        if recorded is None:
            _check_read_columns(self, pool)
            unverified = [c for c in pool.column_names if c not in expected["digest_columns"]]
            logger.warning(
                "%s has format_version %s: its digests cover the row ids and the pool's columns %s, not %s"
                "the cluster ids, which are returned unverified. Re-running the selection with "
                "load_selection(..., recompute=True) checks them.",
                self.origin, self.format_version, expected["digest_columns"],
                f"the columns {unverified} nor " if unverified else "",
            )
            return
        unknown = [c for c in pool.column_names if c not in recorded]
        if unknown:
            raise SelectionMismatchError(
                f"The pool has columns {unknown} that {self.origin} does not record (added after the selection?), "
                f"so their content cannot be verified. Pass the pool without them: "
                f"`pool.remove_columns({unknown})`."
            )
        changed = [c for c, d in column_digests(pool).items() if d != recorded[c]]
        read = [c for c in changed if c in expected["digest_columns"]]
        if read:
            others = [c for c in changed if c not in read]
            raise SelectionMismatchError(
                f"The pool's content differs from the one the selection of {self.origin} was made on, in the "
                f"columns {read} it read{f' (and in {others})' if others else ''}. "
                "Pass the same pool, unchanged and in the same row order."
            )
        if changed:
            raise SelectionMismatchError(
                f"The pool's content differs from the one the selection of {self.origin} was made on, in the "
                f"columns {changed}. Pass the pool as it was, or leave the changed columns out: "
                f"`pool.remove_columns({changed})`."
            )
        _check_read_columns(self, pool)


def _check_read_columns(manifest: Manifest, pool: datasets.Dataset) -> None:
    """The digest of the columns the selection read, over the whole pool (what every format_version records)."""
    expected = manifest.pool
    digest = pool_digest(pool, expected["digest_columns"])
    if digest != expected["digest"]:
        raise SelectionMismatchError(
            f"The pool's content differs from the one the selection of {manifest.origin} was made on (columns "
            f"{expected['digest_columns']}: digest {digest[:19]}... != {expected['digest'][:19]}...). "
            "Pass the same pool, unchanged and in the same row order."
        )


def _parse_json(text: str, origin: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidArgumentError(
            f"{origin} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}): a truncated or "
            "corrupt file? Use the manifest.json that hf_idsel wrote."
        ) from None
    except (ValueError, RecursionError) as err:  # e.g. an integer past Python's digit limit, or nesting too deep
        raise InvalidArgumentError(f"{origin} is not a readable JSON manifest: {type(err).__name__}: {err}") from None


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class _FieldError(Exception):
    pass


def check_fields(data, origin: str = "the manifest") -> None:
    """Refuse a manifest dict with a missing, mistyped, out-of-range or inconsistent field.

    Checks every field's type, that row counts and ids fit `[0, pool.num_rows)`, that the selected ids
    are strictly ascending, that cluster ids are in `[0, k)`, that the per-cluster counts agree with
    `cluster_sizes`, `selected_clusters` and the pool's size, that `cluster_descriptions` (when present)
    has one entry per cluster, and that a manifest of format_version 2 has its `column_digests` and
    `clusters_digest`. Digests are checked by [`Manifest.check_integrity`].

    Raises:
        [`InvalidArgumentError`]: names `origin`, the field and what is wrong.
    """
    try:
        _check_fields(data, origin)
    except _FieldError as err:
        raise InvalidArgumentError(
            f"{origin} is not a valid hf_idsel manifest: {err} Use the manifest as written by hf_idsel."
        ) from None


def _check_fields(data, origin: str) -> None:
    if not isinstance(data, dict):
        raise _FieldError(f"expected a JSON object, got {type(data).__name__}.")
    deep = _nested_deeper(data, _MAX_DEPTH)
    if deep is not None:
        raise _FieldError(f"`{deep}` is nested deeper than any manifest field ({_MAX_DEPTH} levels).")
    version = data.get("format_version", 1)
    if not _is_int(version) or version < 1:
        raise _FieldError(f"`format_version`={_short(version)} must be a positive int.")
    if version > FORMAT_VERSION:
        raise InvalidArgumentError(
            f"{origin} has format_version {version}; this hf_idsel reads up to {FORMAT_VERSION}. Upgrade hf_idsel."
        )
    if version < _FIRST_VERSION_WITH_COLUMN_DIGESTS:
        # Version 1 is read with fewer digests; a later manifest relabelled as 1 would shed its cluster digest.
        later = [name for name in _FIELDS_AFTER_VERSION_1 if data.get(name) is not None]
        later += ["pool.column_digests"] if isinstance(data.get("pool"), dict) and "column_digests" in data["pool"] else []
        if later:
            raise _FieldError(
                f"it says `format_version` 1 but holds {later}, which only later versions write: it was relabelled, "
                "and its fields cannot be verified against the digests of the version it was written as."
            )
    required = [f.name for f in fields(Manifest) if f.name not in data and _is_required(f)]
    if version >= _FIRST_VERSION_WITH_COLUMN_DIGESTS and data.get("clusters_digest") is None:
        required.append("clusters_digest")
    if required:
        raise _FieldError(f"missing fields {required}.")

    def expect(name, value, kinds, what):
        if not isinstance(value, kinds):
            raise _FieldError(f"`{name}`={_short(value)} must be {what}.")

    def expect_int(name, value, low, high):
        if not _is_int(value) or not low <= value <= high:
            raise _FieldError(f"`{name}`={_short(value)} must be an int in [{low}, {high}].")

    for name in ("arguments", "k_selection", "budget"):
        expect(name, data[name], dict, "a JSON object")
    for name in ("render", "encoder", "dedup", "decontamination", "target"):
        expect(name, data.get(name), (dict, type(None)), "a JSON object or null")
    expect("versions", data.get("versions", {}), dict, "a JSON object")
    expect("method", data["method"], str, "a string")
    expect("created_at", data.get("created_at", ""), str, "a string")
    expect("selected_digest", data["selected_digest"], str, "a 'sha256:...' string")
    expect("clusters_digest", data.get("clusters_digest"), (str, type(None)), "a 'sha256:...' string")
    if not _is_int(data["seed"]):
        raise _FieldError(f"`seed`={_short(data['seed'])} must be an int.")
    if not all(isinstance(key, str) for key in data["arguments"]):
        raise _FieldError("`arguments` must have string keys.")

    pool = data["pool"]
    expect("pool", pool, dict, "a JSON object")
    for key in ("fingerprint", "num_rows", "digest", "digest_columns"):
        if key not in pool:
            raise _FieldError(f"`pool` lacks `{key}`.")
    rows = pool["num_rows"]
    expect_int("pool.num_rows", rows, 0, _MAX_ROWS)
    expect("pool.digest", pool["digest"], str, "a 'sha256:...' string")
    expect("pool.fingerprint", pool["fingerprint"], (str, type(None)), "a string")
    expect("pool.name", pool.get("name"), (str, type(None)), "a string or null")
    columns = pool["digest_columns"]
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise _FieldError(f"`pool.digest_columns`={_short(columns)} must be a list of column names.")
    source = pool.get("source")
    expect("pool.source", source, (dict, type(None)), "a JSON object or null")
    for key, value in (source or {}).items():
        expect(f"pool.source.{key}", value, (str, type(None)), "a string or null")
    recorded = pool.get("column_digests")
    if recorded is None and version >= _FIRST_VERSION_WITH_COLUMN_DIGESTS:
        raise _FieldError("`pool` lacks `column_digests`.")
    if recorded is not None:
        if not isinstance(recorded, dict) or not all(isinstance(d, str) for d in recorded.values()):
            raise _FieldError(f"`pool.column_digests`={_short(recorded)} must map column names to digests.")
        unrecorded = [c for c in columns if c not in recorded]
        if unrecorded:
            raise _FieldError(f"`pool.column_digests` lacks the columns {unrecorded} of `pool.digest_columns`.")

    for key, value in data["budget"].items():
        if key in _BUDGET_NUMBERS and value is not None and not (_is_finite(value) and 0 <= value <= _MAX_ROWS):
            raise _FieldError(f"`budget.{key}`={_short(value)} must be a number in [0, {_MAX_ROWS}] or null.")
    k = data["k"]
    expect_int("k", k, 1, max(rows, 1))
    lists = {}
    for name in ("cluster_sizes", "selected_per_cluster", "selected_indices", "selected_clusters"):
        values = data[name]
        if not isinstance(values, list) or not all(_is_int(v) for v in values):
            raise _FieldError(f"`{name}`={_short(values)} must be a list of ints.")
        lists[name] = values
    sizes, per_cluster = lists["cluster_sizes"], lists["selected_per_cluster"]
    indices, clusters = lists["selected_indices"], lists["selected_clusters"]
    for name in ("cluster_sizes", "selected_per_cluster"):
        if len(lists[name]) != k:
            raise _FieldError(f"`{name}` has {len(lists[name])} entries; `k`={k} needs one per cluster.")
    removed = _check_decontamination(data.get("decontamination"), rows, indices, k)
    if any(not 0 <= s <= rows for s in sizes) or sum(sizes) != rows - removed:
        left = f" less the {removed} rows decontamination removed" if removed else ""
        raise _FieldError(f"`cluster_sizes` must be non-negative and sum to `pool.num_rows`={rows}{left}.")
    if len(clusters) != len(indices):
        raise _FieldError(
            f"`selected_clusters` has {len(clusters)} entries and `selected_indices` {len(indices)}; they must align."
        )
    bad = next((i for i, v in enumerate(indices) if not 0 <= v < rows), None)
    if bad is not None:
        raise _FieldError(f"`selected_indices[{bad}]`={_short(indices[bad])} is not a row of the {rows}-row pool.")
    bad = next((i for i in range(1, len(indices)) if indices[i] <= indices[i - 1]), None)
    if bad is not None:
        raise _FieldError(f"`selected_indices` must be strictly ascending (index {bad} is not).")
    bad = next((i for i, c in enumerate(clusters) if not 0 <= c < k), None)
    if bad is not None:
        raise _FieldError(f"`selected_clusters[{bad}]`={_short(clusters[bad])} is not a cluster id in [0, k={k}).")
    counts = np.bincount(np.asarray(clusters, dtype=np.int64), minlength=k).tolist()
    if counts != per_cluster:
        raise _FieldError("`selected_per_cluster` does not count the `selected_clusters`.")
    if any(c > s for c, s in zip(per_cluster, sizes)):
        raise _FieldError("`selected_per_cluster` exceeds `cluster_sizes`.")
    _check_descriptions(data.get("cluster_descriptions"), k)
    _check_target(data.get("target"), data["arguments"], k)
    _check_k_selection(data["k_selection"], k)
    points = data.get("cluster_map")
    if points is not None and (
        not isinstance(points, list)
        or len(points) != k
        or not all(isinstance(p, list) and len(p) == 2 and all(_is_finite(v) for v in p) for p in points)
    ):
        raise _FieldError(f"`cluster_map`={_short(points)} must be null or one [x, y] pair of numbers per cluster (k={k}).")


def _nested_deeper(data, limit: int) -> str | None:
    """The path of a value nested deeper than `limit` levels in `data`, or None; iterative, so no depth of JSON that
    `json` reads can exhaust the stack here (the copies and checks after this one recurse)."""
    stack = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > limit:
            return path
        if isinstance(value, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k), depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value))
    return None


def _check_k_selection(record: dict, k: int) -> None:
    """A k="auto" record: the silhouette curve (int keys, numbers), the chosen k is the manifest's k, and the fields
    derived from the curve (best, local maxima, seed spread, near-ties) are what the curve gives. Records written
    before a field existed simply lack it."""
    if record.get("mode") != "auto":
        return
    if "silhouette" not in record:
        raise _FieldError("`k_selection.silhouette` is missing: a k='auto' record holds the curve that chose k.")
    for name in ("silhouette", "standard_error"):
        _check_curve(record.get(name, {}), f"k_selection.{name}")
    if "candidates" in record and record["candidates"] != sorted(int(c) for c in record["silhouette"]):
        raise _FieldError("`k_selection.candidates` must be the candidates of `k_selection.silhouette`, ascending.")
    if "chosen" in record and record["chosen"] != k:
        raise _FieldError(f"`k_selection.chosen`={_short(record['chosen'])} must be the manifest's `k`={k}.")
    curve = {int(c): v for c, v in record["silhouette"].items()}
    estimator = record.get("estimator")
    if estimator is not None and (
        not isinstance(estimator, dict)
        or not all(_is_int(estimator.get(name)) and estimator[name] > 0 for name in ("sample_size", *estimator.keys() & {"search_rows"}))
    ):
        raise _FieldError(f"`k_selection.estimator`={_short(estimator)} must hold a positive int `sample_size` (and `search_rows`).")
    if "rule" in record and record["rule"] not in K_RULES:
        raise _FieldError(f"`k_selection.rule`={_short(record['rule'])} must be one of {list(K_RULES)}.")
    if "best" in record and curve and record["best"] != max(curve, key=lambda c: (curve[c], -c)):
        raise _FieldError(f"`k_selection.best`={_short(record['best'])} is not the candidate with the highest silhouette.")
    if record.get("rule") == "global" and record.get("best", k) != k:
        raise _FieldError("`k_selection.best` must be the manifest's `k` under the rule 'global'.")
    if "local_maxima" in record and record["local_maxima"] != local_maxima(curve):
        raise _FieldError(f"`k_selection.local_maxima`={_short(record['local_maxima'])} are not the silhouette curve's.")
    check = record.get("seed_check")
    if check is not None:
        if not isinstance(check, dict) or not isinstance(check.get("seed"), int) or not _is_finite(check.get("spread")):
            raise _FieldError(f"`k_selection.seed_check`={_short(check)} must hold an int `seed`, `silhouette` and a number `spread`.")
        _check_curve(check.get("silhouette"), "k_selection.seed_check.silhouette")
        again = {int(c): v for c, v in check["silhouette"].items()}
        if not set(again) <= set(curve) or not math.isclose(check["spread"], seed_spread(curve, again), rel_tol=1e-9, abs_tol=1e-12):
            raise _FieldError("`k_selection.seed_check.spread` is not the spread of its scores against the curve's.")
    ties = record.get("ties")
    if ties is not None:
        errors = {int(c): v for c, v in record.get("standard_error", {}).items()}
        if (
            not isinstance(ties, dict) or check is None or set(errors) != set(curve) or not _is_finite(ties.get("z"))
            or ties.get("rule") != "smallest k"
        ):
            raise _FieldError(f"`k_selection.ties`={_short(ties)} needs `z`, rule 'smallest k', a seed check and every standard error.")
        tied = near_ties(curve, errors, check["spread"], z=ties["z"])
        if ties.get("tied") != tied or record.get("chosen", k) != tied[0]:
            raise _FieldError(f"`k_selection.ties.tied`={_short(ties.get('tied'))} must be the near-ties {tied}, and k their smallest.")


def _check_curve(curve, name: str) -> None:
    if not isinstance(curve, dict) or not all(
        isinstance(key, str) and key.isdigit() and _is_finite(v) for key, v in curve.items()
    ):
        raise _FieldError(f"`{name}`={_short(curve)} must map each candidate k to a number.")


def _is_finite(value) -> bool:
    """Whether `value` is a number (not a bool) whose float value is finite. Any JSON number is answered: an int of
    any size (one past the float range, about 1.8e308, is not finite), a float, or NaN/inf (`json` reads those)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int (or a fraction) too large for a float
        return False


def _check_decontamination(record, rows: int, selected: list, k: int) -> int:
    """The number of rows decontamination removed; refuses a record whose rows are not distinct pool rows kept
    out of the selection, or whose per-row lists do not align with them."""
    if record is None:
        return 0
    removed = record.get("removed_indices")
    if not isinstance(removed, list) or not all(_is_int(v) for v in removed):
        raise _FieldError(f"`decontamination.removed_indices`={_short(removed)} must be a list of ints.")
    if record.get("removed") != len(removed):
        raise _FieldError(f"`decontamination.removed`={_short(record.get('removed'))} must count `removed_indices`.")
    if any(not 0 <= v < rows for v in removed) or any(b <= a for a, b in zip(removed, removed[1:])):
        raise _FieldError(f"`decontamination.removed_indices` must be ascending rows of the {rows}-row pool.")
    for name in ("matched_items", "ngram_overlap", "cosine"):
        if not isinstance(record.get(name), list) or len(record[name]) != len(removed):
            raise _FieldError(f"`decontamination.{name}` must be a list with one entry per removed row.")
    nearest = record.get("nearest_clusters")  # written since the map marks drops; older records lack it
    if nearest is not None and (
        not isinstance(nearest, list) or len(nearest) != len(removed) or not all(_is_int(c) and 0 <= c < k for c in nearest)
    ):
        raise _FieldError(
            f"`decontamination.nearest_clusters`={_short(nearest)} must hold one cluster id in [0, {k}) per removed row."
        )
    if set(removed) & set(selected):
        raise _FieldError("`decontamination.removed_indices` and `selected_indices` share rows: a removed row was selected.")
    return len(removed)


def _check_target(record, arguments: dict, k: int) -> None:
    """A target record: its examples' count and digest, a known method and sharpness that the arguments agree with, task
    counts that add up, one affinity in [0, 1] per cluster."""
    if record is None:
        return
    rows, digest, affinity = record.get("num_rows"), record.get("digest"), record.get("cluster_affinity")
    if not _is_int(rows) or rows < 1 or not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise _FieldError(f"`target` must hold `num_rows` (an int >= 1) and a 'sha256:...' `digest`, got {_short(record)}.")
    if record.get("method") not in ("kmq", "rds") or arguments.get("target_method", record["method"]) != record["method"]:
        raise _FieldError(f"`target.method`={_short(record.get('method'))} must be 'kmq' or 'rds', as `arguments.target_method` says.")
    if not isinstance(affinity, list) or len(affinity) != k or not all(_is_finite(a) and 0 <= a <= 1 for a in affinity):
        raise _FieldError(f"`target.cluster_affinity`={_short(affinity)} must hold one number in [0, 1] per cluster (k={k}).")
    sharpness, tasks = record.get("sharpness"), record.get("tasks")
    if record["method"] == "kmq" and not (_is_finite(sharpness) and sharpness >= 0 and arguments.get("target_sharpness", sharpness) == sharpness):
        raise _FieldError(f"`target.sharpness`={_short(sharpness)} must be a number >= 0, as `arguments.target_sharpness` says.")
    if tasks is not None and not (isinstance(tasks, dict) and all(_is_int(n) and n > 0 for n in tasks.values()) and sum(tasks.values()) == rows):
        raise _FieldError(f"`target.tasks`={_short(tasks)} must count each task's examples, {rows} in all.")
    nearest = record.get("example_clusters")  # absent in records written before the target-loss scorer
    if nearest is not None and not (isinstance(nearest, list) and len(nearest) == rows and all(_is_int(c) and 0 <= c < k for c in nearest)):
        raise _FieldError(f"`target.example_clusters`={_short(nearest)} must hold each example's cluster in [0, {k}).")


def _check_descriptions(descriptions, k) -> None:
    if descriptions is None:
        return
    if not isinstance(descriptions, list) or len(descriptions) != k:
        raise _FieldError(f"`cluster_descriptions`={_short(descriptions)} must be null or a list of one entry per cluster (k={k}).")
    for j, entry in enumerate(descriptions):
        if not isinstance(entry, dict):
            raise _FieldError(f"`cluster_descriptions[{j}]`={_short(entry)} must be a JSON object.")
        for key in ("terms", "examples"):
            values = entry.get(key)
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise _FieldError(f"`cluster_descriptions[{j}].{key}`={_short(values)} must be a list of strings.")
        rows = entry.get("example_rows", [])
        if not isinstance(rows, list) or not all(_is_int(r) for r in rows):
            raise _FieldError(f"`cluster_descriptions[{j}].example_rows`={_short(rows)} must be a list of ints.")


def _short(value) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        return f"<{type(value).__name__} too large to print>"
    return text if len(text) <= 60 else text[:57] + "..."


def _is_required(f) -> bool:
    return f.default is MISSING and f.default_factory is MISSING
