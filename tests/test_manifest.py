import datetime
import json

import datasets
import pytest

from hf_idsel import InvalidArgumentError, Manifest, SelectionMismatchError, diverse_select, load_selection


@pytest.fixture
def selection(blob_pool, tmp_path):
    subset, manifest = diverse_select(blob_pool, 30, embedding_column="embedding", k="auto", return_manifest=True, seed=4)
    path = manifest.save(str(tmp_path / "manifest.json"))
    return subset, manifest, path


def test_manifest_records_the_selection(selection, blob_pool):
    subset, manifest, path = selection
    data = json.loads(open(path).read())
    assert data["pool"]["num_rows"] == 250 and data["pool"]["digest"].startswith("sha256:")
    assert data["method"] == "kmq" and data["seed"] == 4 and data["k"] == 6
    assert data["selected_indices"] == subset["source_index"]
    assert data["selected_clusters"] == subset["cluster"]
    assert sum(data["cluster_sizes"]) == 250 and sum(data["selected_per_cluster"]) == 30
    assert data["encoder"] == {"embedding_column": "embedding", "dim": 16}
    assert "datasets" in data["versions"] and "faiss-cpu" in data["versions"]
    assert data["arguments"]["budget"] == 30 and data["arguments"]["k"] == "auto"


def test_load_selection_round_trips(selection, blob_pool):
    subset, _, path = selection
    rebuilt = load_selection(path, blob_pool)
    assert rebuilt.to_dict() == subset.to_dict()
    again = load_selection(path, blob_pool, recompute=True)
    assert again.to_dict() == subset.to_dict()


def test_load_selection_refuses_a_different_pool(selection, blob_pool):
    subset, _, path = selection
    # The selection read the embeddings: a change to one vector is refused...
    edited = blob_pool.map(lambda row, i: {"embedding": row["embedding"][::-1] if i == 7 else row["embedding"]}, with_indices=True)
    with pytest.raises(SelectionMismatchError, match="content differs"):
        load_selection(path, edited)
    # ...and so is a change to a column it never read, since that column comes back in the subset:
    # the error names it, and leaving it out of the pool loads the same rows without it.
    rescored = blob_pool.map(lambda row: {"quality": 0.0})
    with pytest.raises(SelectionMismatchError, match=r"columns \['quality'\].*remove_columns"):
        load_selection(path, rescored)
    without = load_selection(path, rescored.remove_columns("quality"))
    assert without.to_dict() == subset.remove_columns("quality").to_dict()
    # A column added afterwards is not recorded, so it cannot be verified: refused by name.
    with pytest.raises(SelectionMismatchError, match=r"\['score'\].*does not record"):
        load_selection(path, blob_pool.add_column("score", [0.0] * 250))
    with pytest.raises(SelectionMismatchError, match="rows"):
        load_selection(path, blob_pool.select(range(200)))
    # Reordering the pool changes what the row ids point at.
    with pytest.raises(SelectionMismatchError):
        load_selection(path, blob_pool.shuffle(seed=0))


def test_edited_manifest_is_refused(selection, blob_pool):
    _, manifest, path = selection
    data = manifest.to_dict()
    data["selected_indices"][0] = (data["selected_indices"][0] + 1) % 250
    with pytest.raises(SelectionMismatchError, match="digest"):
        load_selection(data, blob_pool)
    with pytest.raises(InvalidArgumentError, match="missing fields"):
        Manifest.load({"method": "kmq"})
    with pytest.raises(InvalidArgumentError, match="no such local file"):
        Manifest.load(str(path) + ".missing")


def test_rerun_from_a_manifest_on_a_reloaded_pool(selection, blob_pool, tmp_path):
    subset, _, path = selection
    blob_pool.to_parquet(str(tmp_path / "pool.parquet"))
    reloaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "pool.parquet"), split="train")
    assert load_selection(path, reloaded)["source_index"] == subset["source_index"]


# ------------------------------------------------------------------------------------------------
# Added with the mutation run of manifest.py (scripts/mutation_test.py, docs/testing.md). These
# tests build small pools and manifests by hand: no clustering, so each runs in milliseconds.
# ------------------------------------------------------------------------------------------------

import hashlib  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import struct  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

import hf_idsel.manifest as manifest_module  # noqa: E402
from hf_idsel.manifest import (  # noqa: E402
    FORMAT_VERSION,
    check_fields,
    clusters_digest,
    column_digests,
    encoder_record,
    indices_digest,
    library_versions,
    pool_digest,
    pool_name,
    pool_record,
    selection_subset,
)

DATA = os.path.join(os.path.dirname(__file__), "data")


def _exactly(message):
    """A `match=` pattern for exactly this error message."""
    return "^" + re.escape(message) + "$"


def _invalid(message, origin="the manifest"):
    """The full message of a malformed-field error."""
    return _exactly(f"{origin} is not a valid hf_idsel manifest: {message} Use the manifest as written by hf_idsel.")


def _sha(*parts: bytes) -> str:
    return "sha256:" + hashlib.sha256(b"".join(parts)).hexdigest()


def _json(value) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode()


def _i8(values) -> bytes:
    return struct.pack(f"<{len(values)}q", *values)


def _dataset(columns: dict) -> datasets.Dataset:
    """A dataset straight from Arrow arrays (to choose list, large_list or fixed_size_list)."""
    return datasets.Dataset(pa.table(columns))


@pytest.fixture
def tiny_pool():
    """12 rows: a text column (non-ASCII included), 2-d float32 vectors (what the selection reads), a score."""
    return datasets.Dataset.from_dict(
        {
            "text": [f"ligne {i} é" for i in range(12)],
            "embedding": [[float(i), float(i % 3) - 1.5] for i in range(12)],
            "score": [i / 4 for i in range(12)],
        },
        features=datasets.Features(
            {
                "text": datasets.Value("string"),
                "embedding": datasets.Sequence(datasets.Value("float32")),
                "score": datasets.Value("float64"),
            }
        ),
    )


def _tiny_manifest(pool, **changes) -> Manifest:
    """A valid format-2 manifest of 4 rows of `pool` (a dataset, or its record) in 3 clusters of 4 rows each
    (rows 0-3, 4-7, 8-11)."""
    fields_ = dict(
        pool=pool_record(pool, ["embedding"], name="tiny") if isinstance(pool, datasets.Dataset) else pool,
        arguments={"budget": 4, "k": 3},
        method="kmq",
        seed=7,
        k=3,
        k_selection={"mode": "fixed"},
        budget={"requested": 4, "rows": 4},
        cluster_sizes=[4, 4, 4],
        selected_per_cluster=[1, 2, 1],
        selected_indices=[1, 5, 6, 9],
        selected_clusters=[0, 1, 1, 2],
        selected_digest=indices_digest([1, 5, 6, 9]),
        encoder={"embedding_column": "embedding", "dim": 2},
    )
    fields_.update(changes)
    return Manifest(**fields_)


@pytest.fixture
def tiny(tiny_pool):
    return _tiny_manifest(tiny_pool)


def _edit(data: dict, path: str, value) -> dict:
    """`data` with the field at `path` ("pool.num_rows") set to `value`, or removed when `value` is `...`."""
    data = json.loads(json.dumps(data))
    *parents, last = path.split(".")
    target = data
    for part in parents:
        target = target[part]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return data


# ---- digests: what they cover, pinned so that manifests written today still verify later ----


def test_indices_digest_is_sha256_of_the_sorted_ids_as_little_endian_int64():
    expected = _sha(_i8([1, 5, 6, 9]))
    assert indices_digest([1, 5, 6, 9]) == expected
    assert indices_digest([9, 1, 6, 5]) == expected  # in pool order, whatever order they come in
    assert indices_digest(np.array([9, 6, 5, 1], dtype=np.int32)) == expected
    assert indices_digest([1, 5, 6, 10]) != expected
    assert indices_digest([]) == _sha(b"")


def test_clusters_digest_covers_each_row_with_its_cluster_in_the_order_given():
    header = json.dumps({"rows": 4}).encode()
    expected = _sha(header, _i8([1, 5, 6, 9]), _i8([0, 1, 1, 2]))
    assert clusters_digest([1, 5, 6, 9], [0, 1, 1, 2]) == expected
    assert clusters_digest(np.array([1, 5, 6, 9], dtype=np.int32), np.array([0, 1, 1, 2], dtype=np.uint8)) == expected
    assert clusters_digest([1, 5, 6, 9], [0, 1, 2, 2]) != expected  # one cluster id changed
    assert clusters_digest([1, 6, 5, 9], [0, 1, 1, 2]) != expected  # the order is part of it
    assert clusters_digest([], []) == _sha(json.dumps({"rows": 0}).encode())


def test_pool_digest_is_the_json_of_the_read_columns_and_the_float32_vectors(tiny_pool):
    texts = list(tiny_pool["text"])
    vectors = np.asarray(list(tiny_pool["embedding"]), dtype="<f4")
    header = json.dumps({"rows": 12, "columns": ["embedding", "text"]}).encode()
    expected = _sha(header, vectors.tobytes(), _json(texts))
    assert pool_digest(tiny_pool, ["text", "embedding"]) == expected
    assert pool_digest(tiny_pool, ["embedding", "text"]) == expected  # column order does not matter
    only_text = _sha(json.dumps({"rows": 12, "columns": ["text"]}).encode(), _json(texts))
    assert pool_digest(tiny_pool, ["text"]) == only_text
    assert pool_digest(tiny_pool, ["score"]) != only_text


def test_column_digests_are_the_json_of_each_column_and_vectors_as_exact_float64(tiny_pool):
    digests = column_digests(tiny_pool)
    assert list(digests) == ["text", "embedding", "score"]

    def header(name):
        return json.dumps({"rows": 12, "column": name}).encode()

    assert digests["text"] == _sha(header("text"), _json(list(tiny_pool["text"])))
    assert digests["score"] == _sha(header("score"), _json(list(tiny_pool["score"])))
    vectors = np.asarray(list(tiny_pool["embedding"]), dtype="<f8")
    lengths = np.full(12, 2, dtype="<i8")
    assert digests["embedding"] == _sha(header("embedding"), lengths.tobytes(), bytes(24), vectors.tobytes())
    assert column_digests(tiny_pool, ["score"]) == {"score": digests["score"]}
    # The column name is part of its digest.
    assert column_digests(tiny_pool.rename_column("score", "rating"))["rating"] != digests["score"]


def test_vector_digests_see_lengths_missing_values_and_the_last_bit():
    def digest(values, value_type=pa.float64()):
        return column_digests(_dataset({"v": pa.array(values, type=pa.list_(value_type))}))["v"]

    base = digest([[1.0, 2.0], [3.0]])
    assert digest([[1.0], [2.0, 3.0]]) != base  # same numbers, other vectors
    assert digest([[1.0, 2.0], [3.0 + 1e-15]]) != base  # exact: a change float32 cannot hold still shows
    assert digest([[1.0, 2.0], [3.0]], pa.float32()) == base  # float32 and float64 alike, when the values are equal
    assert digest([[1.0, 2.0], None]) != digest([[1.0, 2.0], []])  # a missing vector is not an empty one
    assert digest([[1.0, None]]) != digest([[1.0, float("nan")]])  # a missing value is not NaN
    assert digest([[1.0], None]) != digest([None, [1.0]])
    # Pinned: a missing vector has length -1; a missing value is flagged, and read as NaN.
    header = json.dumps({"rows": 3, "column": "v"}).encode()
    lengths, missing, values = _i8([2, -1, 0]), bytes([0, 1]), np.array([1.0, np.nan], dtype="<f8").tobytes()
    assert digest([[1.0, None], None, []]) == _sha(header, lengths, missing, values)
    # Lists of ints are not vectors: they are hashed as JSON.
    ints = _dataset({"v": pa.array([[1, 2], [3]], type=pa.list_(pa.int64()))})
    assert column_digests(ints)["v"] == _sha(json.dumps({"rows": 2, "column": "v"}).encode(), _json([[1, 2], [3]]))


def test_digests_do_not_depend_on_the_file_layout(tiny_pool, tmp_path):
    """The same content as a list, large_list or fixed_size_list column, in one chunk or several, from parquet,
    or as a select view: one digest."""
    vectors = np.asarray(list(tiny_pool["embedding"]), dtype=np.float32)
    flat = pa.array(vectors.ravel())
    layouts = {
        "list": pa.ListArray.from_arrays(pa.array(np.arange(0, 25, 2, dtype=np.int32)), flat),
        "large_list": pa.LargeListArray.from_arrays(pa.array(np.arange(0, 25, 2, dtype=np.int64)), flat),
        "fixed_size_list": pa.FixedSizeListArray.from_arrays(flat, 2),
    }
    expected_pool = pool_digest(tiny_pool, ["embedding", "text"])
    expected_columns = column_digests(tiny_pool, ["embedding", "text"])
    for name, array in layouts.items():
        pool = _dataset({"text": pa.array(list(tiny_pool["text"])), "embedding": array})
        assert pool_digest(pool, ["embedding", "text"]) == expected_pool, name
        assert column_digests(pool) == expected_columns, name
    chunked = datasets.concatenate_datasets([tiny_pool.select(range(0, 5)), tiny_pool.select(range(5, 12))])
    tiny_pool.to_parquet(str(tmp_path / "pool.parquet"))
    reloaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "pool.parquet"), split="train")
    reordered = tiny_pool.select(range(11, -1, -1)).select(range(11, -1, -1))  # a view back in the first order
    for pool in (chunked, reloaded, reordered):
        assert pool_digest(pool, ["embedding", "text"]) == expected_pool
        assert column_digests(pool) == column_digests(tiny_pool)
    # A view reads its rows in the view's order, not in the order they are stored.
    backwards = tiny_pool.select(range(11, -1, -1))
    stored_backwards = datasets.Dataset.from_dict(backwards.to_dict(), features=tiny_pool.features)
    assert pool_digest(backwards, ["embedding", "text"]) == pool_digest(stored_backwards, ["embedding", "text"])
    assert column_digests(backwards) == column_digests(stored_backwards) != column_digests(tiny_pool)


def test_digests_of_chat_messages_and_other_arrow_types():
    """A `messages` column (lists of structs) digests the same whatever order its struct fields were stored in
    (a JSON file with the keys in another order); timestamps, bytes and decimals are hashed as their text."""
    import datetime as dt
    import decimal

    chats = [[{"role": "user", "content": "Salut"}, {"role": "assistant", "content": "Bonjour é"}], []]
    swapped = [[{"content": m["content"], "role": m["role"]} for m in chat] for chat in chats]
    others = {
        "when": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5), None]),
        "raw": pa.array([b"\x00\xff", b""]),
        "price": pa.array([decimal.Decimal("1.50"), decimal.Decimal("-2.25")]),
    }
    one = _dataset({"messages": pa.array(chats), **others})
    two = _dataset({"messages": pa.array(swapped), **others})
    assert one.data.table.column("messages").type != two.data.table.column("messages").type
    assert column_digests(one) == column_digests(two)
    assert pool_digest(one, ["messages", "when"]) == pool_digest(two, ["messages", "when"])

    def header(name):
        return json.dumps({"rows": 2, "column": name}).encode()

    expected = {name: _sha(header(name), _json(one.data.table.column(name).to_pylist())) for name in one.column_names}
    assert column_digests(one) == expected
    assert _json(one.data.table.column("messages").to_pylist()).startswith(b'[[{"content": "Salut", "role": "user"}')
    assert _json(one.data.table.column("when").to_pylist()) == b'["2024-01-02 03:04:05", null]'
    edited = [[dict(chats[0][0]), dict(chats[0][1], content="Bonjour")], []]
    assert column_digests(_dataset({"messages": pa.array(edited)}))["messages"] != expected["messages"]


def test_digests_see_a_change_in_any_row_across_batches():
    n = 20_001  # past two digest batches of 10,000 rows
    base = datasets.Dataset.from_dict({"n": list(range(n))})
    pooled, columns = pool_digest(base, ["n"]), column_digests(base)["n"]
    for row in (0, 9_999, 10_000, 10_001, 20_000):
        values = list(range(n))
        values[row] = -1
        changed = datasets.Dataset.from_dict({"n": values})
        assert pool_digest(changed, ["n"]) != pooled, row
        assert column_digests(changed)["n"] != columns, row
    assert pool_digest(base.select(range(n - 1)), ["n"]) != pooled  # one row fewer
    # Pinned: the JSON of each batch of 10,000 rows, one after the other.
    batches = [_json(list(range(start, min(start + 10_000, n)))) for start in range(0, n, 10_000)]
    assert pooled == _sha(json.dumps({"rows": n, "columns": ["n"]}).encode(), *batches)
    assert columns == _sha(json.dumps({"rows": n, "column": "n"}).encode(), *batches)


def test_pool_digest_of_vectors_covers_every_row_past_its_batch_of_100000():
    n = 100_001
    values = np.arange(n, dtype=np.float32)
    pool = _dataset({"v": pa.FixedSizeListArray.from_arrays(pa.array(values), 1)})
    # The float32 values of all rows, each once and in order, however they are batched.
    assert pool_digest(pool, ["v"]) == _sha(json.dumps({"rows": n, "columns": ["v"]}).encode(), values.tobytes())


def test_pool_digest_reads_vectors_as_float32_like_the_selection(tiny_pool):
    """A change smaller than float32 can hold leaves the selection's input, so `pool.digest`, unchanged; the
    column digest still sees it."""
    nudged = tiny_pool.cast_column("embedding", datasets.Sequence(datasets.Value("float64"))).map(
        lambda row, i: {"embedding": [v + 1e-12 for v in row["embedding"]] if i == 3 else row["embedding"]},
        with_indices=True,
    )
    assert pool_digest(nudged, ["embedding"]) == pool_digest(tiny_pool, ["embedding"])
    assert column_digests(nudged)["embedding"] != column_digests(tiny_pool)["embedding"]
    moved = tiny_pool.map(lambda row, i: {"embedding": [0.5, 0.5] if i == 11 else row["embedding"]}, with_indices=True)
    assert pool_digest(moved, ["embedding"]) != pool_digest(tiny_pool, ["embedding"])


def test_old_manifests_still_verify_against_their_pool(blob_pool):
    """tests/data/v1_*.json were written by an earlier hf_idsel: its digests of the ids and of the read columns
    must still come out the same."""
    for name in ("v1_kmq_auto", "v1_quality_k4"):
        manifest = Manifest.load(os.path.join(DATA, f"{name}.json"))
        assert manifest.format_version == 1 and manifest.clusters_digest is None
        assert manifest.pool.get("column_digests") is None
        manifest.check_integrity()
        manifest.check_pool(blob_pool)
        assert pool_digest(blob_pool, manifest.pool["digest_columns"]) == manifest.pool["digest"]
        assert indices_digest(manifest.selected_indices) == manifest.selected_digest


# ---- the records a manifest is made of ----


def test_pool_name_from_the_dataset_info():
    def named(**info):
        return datasets.Dataset.from_dict({"a": [1]}, info=datasets.DatasetInfo(**info))

    assert pool_name(named(dataset_name="org/data", config_name="chat")) == "org/data/chat"
    assert pool_name(named(dataset_name="org/data", config_name="default")) == "org/data"
    assert pool_name(named(dataset_name="org/data")) == "org/data"
    assert pool_name(named(builder_name="parquet", config_name="chat")) == "parquet/chat"
    assert pool_name(named(config_name="chat")) is None
    assert pool_name(datasets.Dataset.from_dict({"a": [1]})) is None


def test_pool_record(tiny_pool):
    record = pool_record(tiny_pool, ["text", "embedding", "text"])
    assert record == {
        "fingerprint": tiny_pool._fingerprint,
        "num_rows": 12,
        "digest": pool_digest(tiny_pool, ["text", "embedding"]),
        "digest_columns": ["text", "embedding"],  # once each, in the order given
        "column_digests": column_digests(tiny_pool),
        "name": None,
    }
    source = {"repo_id": "org/data", "revision": "abc"}
    named = pool_record(tiny_pool, ["embedding"], name="mine", source=source)
    assert named["name"] == "mine" and named["source"] == source
    info = datasets.DatasetInfo(dataset_name="org/data")
    assert pool_record(datasets.Dataset.from_dict({"a": [1]}, info=info), ["a"])["name"] == "org/data"


def test_pool_record_names_the_source_this_process_built_the_pool_from(tmp_path):
    """A pool `load_pool` read from a file records that file as its source (how to build it again), also when the
    caller passes the same path; a given source naming another place (a Hub id for a local copy) wins."""
    from hf_idsel.pool import load_pool, pool_source

    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(3)))
    pool = load_pool(str(path))
    built = pool_source(pool)
    assert built is not None and built["path"] == str(path.resolve())
    assert pool_record(pool, ["text"])["source"] == built
    assert pool_record(pool, ["text"], source={"path": built["path"], "note": "given"})["source"] == built
    hub = {"path": "org/data", "revision": "abc"}
    assert pool_record(pool, ["text"], source=hub)["source"] == hub
    assert "source" not in pool_record(pool.map(lambda row: row), ["text"])  # changed since: no longer that file's rows


def test_encoder_record():
    identity = SimpleNamespace(id="org/encoder", revision="0123abc")
    record = encoder_record(identity, "ignored", np.int64(384))
    assert record == {"id": "org/encoder", "revision": "0123abc", "dim": 384} and type(record["dim"]) is int
    hidden = SimpleNamespace(id="org/lm", revision="r1", settings=(("layer", -1), ("pooling", "mean")))
    assert encoder_record(hidden, None, 64) == {"id": "org/lm", "revision": "r1", "dim": 64, "layer": -1, "pooling": "mean"}
    record = encoder_record(None, "embedding", np.int32(16))
    assert record == {"embedding_column": "embedding", "dim": 16} and type(record["dim"]) is int


def test_selection_subset(tiny_pool):
    subset = selection_subset(tiny_pool, np.array([9, 1]), iter([2, 0]), quality=(0.5, 0.25), round=[3, 3])
    assert subset.column_names == ["text", "embedding", "score", "source_index", "cluster", "quality", "round"]
    assert subset["text"] == [tiny_pool[9]["text"], tiny_pool[1]["text"]]
    assert subset["source_index"] == [9, 1] and subset["cluster"] == [2, 0]
    assert subset["quality"] == [0.5, 0.25] and subset["round"] == [3, 3]
    rows = (i for i in [4, 7])  # any iterable of row ids, read once
    assert selection_subset(tiny_pool, rows, [1, 1])["source_index"] == [4, 7]


def test_library_versions_records_what_is_installed_and_skips_the_rest(monkeypatch):
    import importlib.metadata

    versions = library_versions()
    assert versions["numpy"] == importlib.metadata.version("numpy")
    assert versions["datasets"] == importlib.metadata.version("datasets")
    monkeypatch.setattr(manifest_module, "_VERSIONED_PACKAGES", ("no-such-package-hf-idsel", "numpy"))
    assert library_versions() == {"numpy": importlib.metadata.version("numpy")}


# ---- Manifest: defaults, JSON round trip, loading from every kind of source ----


def test_new_manifest_defaults(tiny):
    assert tiny.format_version == FORMAT_VERSION == 2
    assert tiny.clusters_digest == clusters_digest([1, 5, 6, 9], [0, 1, 1, 2])
    assert tiny.versions == library_versions()
    created = datetime.datetime.fromisoformat(tiny.created_at)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert created.utcoffset() == datetime.timedelta(0) and abs((now - created).total_seconds()) < 600
    assert tiny.render is None and tiny.dedup is None and tiny.origin == "the manifest"
    tiny.check_integrity()
    # A format-1 manifest gets no clusters_digest: it had none.
    assert _tiny_manifest(tiny.pool, format_version=1).clusters_digest is None


def test_manifest_round_trips_through_json_files_folders_and_text(tiny, tmp_path):
    data = tiny.to_dict()
    assert set(data) == {
        "pool", "arguments", "method", "seed", "k", "k_selection", "budget", "cluster_sizes", "selected_per_cluster",
        "selected_indices", "selected_clusters", "selected_digest", "clusters_digest", "render", "encoder", "dedup",
        "versions", "created_at", "format_version", "cluster_descriptions", "decontamination", "cluster_map", "target",
    }
    text = tiny.to_json()
    assert json.loads(text) == data
    assert text.startswith('{\n  "pool": {\n    "fingerprint"')  # indented by 2
    assert "\n" not in tiny.to_json(indent=None)
    assert '"ligne' not in text and "é" not in text  # (the pool's text is not in the manifest)
    named = _tiny_manifest(dict(tiny.pool, name="données"))
    assert '"name": "données"' in named.to_json()  # non-ASCII kept as written

    file_path = named.save(str(tmp_path / "a" / "b" / "m.json"))  # missing folders are made
    assert file_path == str(tmp_path / "a" / "b" / "m.json")
    assert open(file_path, encoding="utf-8").read() == named.to_json()
    folder = tmp_path / "run"
    folder.mkdir()
    assert named.save(str(folder)) == os.path.join(str(folder), "manifest.json")

    for source in (file_path, tmp_path / "a" / "b" / "m.json", str(folder), folder, named.to_json(), "\n  " + text):
        loaded = Manifest.load(source)
        assert isinstance(loaded, Manifest) and loaded.to_dict() == json.loads(Manifest.load(source).to_json())
        assert loaded.format_version == 2
    assert Manifest.load(file_path).to_dict() == named.to_dict()
    assert Manifest.load(file_path).origin == f"manifest {file_path!r}"
    assert Manifest.load(str(folder)).origin == f"manifest {os.path.join(str(folder), 'manifest.json')!r}"
    assert Manifest.load(text).origin == "the manifest JSON text"
    assert Manifest.load(text, origin="mine").origin == "mine"
    assert Manifest.load(file_path, origin="mine").origin == "mine"
    assert Manifest.load(data).to_dict() == data and Manifest.load(data).origin == "the manifest"
    assert Manifest.load(data, origin="hub file").origin == "hub file"
    assert Manifest.from_dict(data).origin == "the manifest"
    assert Manifest.load(tiny) is tiny


def test_a_manifest_saved_where_the_default_encoding_is_not_utf8_loads_back(tiny, tmp_path, monkeypatch):
    import builtins

    def cp1252_by_default(file, mode="r", *args, encoding=None, **kwargs):  # as on Windows in a Western locale
        if "b" not in mode and encoding is None:
            encoding = "cp1252"
        return builtins.open(file, mode, *args, encoding=encoding, **kwargs)

    monkeypatch.setattr(manifest_module, "open", cp1252_by_default, raising=False)
    named = _tiny_manifest(dict(tiny.pool, name="données"))
    path = named.save(str(tmp_path / "manifest.json"))
    assert Manifest.load(path).pool["name"] == "données"


def test_from_dict_reads_old_and_future_fields(tiny):
    data = tiny.to_dict()
    data["written_by_a_later_version"] = {"x": 1}  # unknown fields are left out
    assert Manifest.from_dict(data).to_dict() == tiny.to_dict()
    # Without `format_version` a dict is read as format 1: no column digests or clusters_digest needed.
    old = {k: v for k, v in data.items() if k not in ("format_version", "clusters_digest", "written_by_a_later_version")}
    old["pool"] = {k: v for k, v in old["pool"].items() if k != "column_digests"}
    for key in ("render", "encoder", "dedup", "versions", "created_at"):  # optional fields may be absent
        del old[key]
    manifest = Manifest.from_dict(old)
    assert manifest.format_version == 1 and manifest.clusters_digest is None
    assert manifest.render is None and manifest.to_dict()["format_version"] == 1
    manifest.check_integrity()
    # No format-1 writer wrote a clusters_digest (or any later field): one that carries it was relabelled.
    with pytest.raises(InvalidArgumentError, match=r"says `format_version` 1 but holds \['clusters_digest'\]"):
        Manifest.from_dict(dict(old, clusters_digest=clusters_digest([1, 5, 6, 9], [0, 1, 2, 1])))


def test_a_later_manifest_relabelled_as_format_1_cannot_smuggle_edited_cluster_ids(tiny):
    """Format 1 is read without a cluster digest; relabelling a format-2 manifest as 1 (keeping what only later
    versions write) to edit its cluster ids is refused, naming the fields that give it away."""
    data = tiny.to_dict()
    data.update(format_version=1, selected_clusters=[0, 1, 2, 1], cluster_map=[[0.0, 1.0]] * 3)
    data.pop("clusters_digest")
    with pytest.raises(InvalidArgumentError, match=re.escape(
        "it says `format_version` 1 but holds ['cluster_map', 'pool.column_digests'], which only later versions write: "
        "it was relabelled, and its fields cannot be verified against the digests of the version it was written as."
    )):
        Manifest.from_dict(data)


def test_load_refuses_what_is_not_a_manifest_source_by_name(tmp_path, monkeypatch):
    with pytest.raises(InvalidArgumentError, match=_exactly("`manifest` must be a path, a dict or a Manifest, got int.")):
        Manifest.load(3)
    with pytest.raises(InvalidArgumentError, match=_exactly("`manifest` must be a path, a dict or a Manifest, got bytes.")):
        Manifest.load(b"manifest.json")

    class BytesPath:
        def __fspath__(self):
            return b"manifest.json"

    with pytest.raises(InvalidArgumentError, match=_exactly("`manifest` must be a path, a dict or a Manifest, got bytes.")):
        Manifest.load(BytesPath())
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = (
        "`manifest`={!r}: no such local file (expected a manifest.json, or a folder holding one). Check the path."
    )
    with pytest.raises(InvalidArgumentError, match=_exactly(missing.format(str(empty)))):
        Manifest.load(empty)  # a folder without manifest.json
    with pytest.raises(InvalidArgumentError, match=_exactly(missing.format(str(tmp_path / "nope.json")))):
        Manifest.load(str(tmp_path / "nope.json"))

    path = tmp_path / "binary.json"
    path.write_bytes(b'{"a": "\xff"}')
    origin = f"manifest {str(path)!r}"
    with pytest.raises(InvalidArgumentError, match=_exactly(
        f"{origin} is not UTF-8 text (byte 7): not an hf_idsel manifest, or a corrupt one."
    )):
        Manifest.load(path)
    path.write_text('{"pool": {\n "a": }')
    with pytest.raises(InvalidArgumentError, match=_exactly(
        f"{origin} is not valid JSON (Expecting value at line 2 column 7): a truncated or corrupt file? "
        "Use the manifest.json that hf_idsel wrote."
    )):
        Manifest.load(path)
    with pytest.raises(InvalidArgumentError, match=r"^the manifest JSON text is not valid JSON \(Expecting"):
        Manifest.load('  {"pool": ')
    with pytest.raises(InvalidArgumentError, match=_exactly(
        "the manifest JSON text is not a readable JSON manifest: ValueError: Exceeds the limit (4300 digits) for "
        "integer string conversion: value has 5000 digits; use sys.set_int_max_str_digits() to increase the limit"
    )):
        Manifest.load('{"k": ' + "1" * 5000 + "}")
    with pytest.raises(InvalidArgumentError, match=r"^the manifest JSON text is not a readable JSON manifest: RecursionError"):
        Manifest.load('{"a": ' + "[" * 200_000 + "]" * 200_000 + "}")
    path.write_text("[1, 2]")
    with pytest.raises(InvalidArgumentError, match=_invalid("expected a JSON object, got list.", origin)):
        Manifest.load(path)

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    path.write_text("{}")
    monkeypatch.setattr(manifest_module, "open", unreadable, raising=False)
    with pytest.raises(InvalidArgumentError, match=_exactly(f"Could not read {origin}: Permission denied.")):
        Manifest.load(path)


# ---- check_integrity: an edited row id or cluster id is caught ----


def test_check_integrity_names_the_edited_field(tiny):
    data = tiny.to_dict()
    Manifest.from_dict(data).check_integrity()
    rows = Manifest.from_dict(_edit(data, "selected_indices", [1, 5, 6, 10]))
    with pytest.raises(SelectionMismatchError, match=_exactly(
        "The selected_indices of the manifest do not match its selected_digest: the file was edited or is "
        "corrupt. Use the manifest as written by hf_idsel."
    )):
        rows.check_integrity()
    clusters = Manifest.from_dict(
        _edit(_edit(data, "selected_clusters", [0, 1, 2, 2]), "selected_per_cluster", [1, 1, 2]), origin="m.json"
    )
    with pytest.raises(SelectionMismatchError, match=_exactly(
        "The selected_clusters of m.json do not match its clusters_digest: the file was edited or is corrupt. "
        "Use the manifest as written by hf_idsel."
    )):
        clusters.check_integrity()
    swapped = Manifest.from_dict(_edit(data, "clusters_digest", clusters_digest([1, 5, 6, 9], [0, 1, 1, 2])[:-1] + "0"))
    with pytest.raises(SelectionMismatchError, match="clusters_digest"):
        swapped.check_integrity()
    # Fields edited on the object after loading are checked as well, and the error names the file.
    loaded = Manifest.from_dict(data, origin="m.json")
    loaded.k = 0
    with pytest.raises(InvalidArgumentError, match=_invalid("`k`=0 must be an int in [1, 12].", "m.json")):
        loaded.check_integrity()


# ---- check_pool: a changed pool is refused, naming what changed ----


def test_check_pool_accepts_the_same_pool_in_any_layout(tiny, tiny_pool, tmp_path):
    tiny.check_pool(tiny_pool)
    tiny_pool.to_parquet(str(tmp_path / "pool.parquet"))
    tiny.check_pool(datasets.load_dataset("parquet", data_files=str(tmp_path / "pool.parquet"), split="train"))
    tiny.check_pool(tiny_pool.select(range(12)))
    # A recorded column the selection did not read may be left out.
    tiny.check_pool(tiny_pool.remove_columns(["text", "score"]))


def test_check_pool_names_what_changed(tiny, tiny_pool):
    def refused(pool, message):
        with pytest.raises(SelectionMismatchError, match=_exactly(message)):
            tiny.check_pool(pool)

    refused(
        tiny_pool.select(range(11)),
        "The pool has 11 rows but the selection of the manifest was made on 12 rows (pool tiny). Pass the same pool.",
    )
    unnamed = _tiny_manifest(dict(tiny.pool, name=None))
    with pytest.raises(SelectionMismatchError, match=re.escape(f"12 rows (pool {tiny_pool._fingerprint}).")):
        unnamed.check_pool(tiny_pool.select(range(11)))
    refused(
        tiny_pool.remove_columns("embedding"),
        "The pool lacks columns ['embedding'] that the selection of the manifest was made from. Pass the same pool.",
    )
    refused(
        tiny_pool.add_column("extra", [0] * 12),
        "The pool has columns ['extra'] that the manifest does not record (added after the selection?), so their "
        "content cannot be verified. Pass the pool without them: `pool.remove_columns(['extra'])`.",
    )
    text = tiny_pool.map(lambda row, i: {"text": row["text"] + "!" if i == 11 else row["text"]}, with_indices=True)
    refused(
        text,
        "The pool's content differs from the one the selection of the manifest was made on, in the columns "
        "['text']. Pass the pool as it was, or leave the changed columns out: `pool.remove_columns(['text'])`.",
    )
    tiny.check_pool(text.remove_columns("text"))
    vectors = tiny_pool.map(lambda row, i: {"embedding": [9.0, 9.0] if i == 0 else row["embedding"]}, with_indices=True)
    read = (
        "The pool's content differs from the one the selection of the manifest was made on, in the columns "
        "['embedding'] it read{}. Pass the same pool, unchanged and in the same row order."
    )
    refused(vectors, read.format(""))
    both = vectors.map(lambda row: {"text": row["text"] + "!", "score": -row["score"]})
    refused(both, read.format(" (and in ['text', 'score'])"))


def test_check_pool_refuses_an_edited_pool_digest(tiny, tiny_pool):
    """The column digests all match, but the digest of the columns the selection read was edited."""
    data = _edit(tiny.to_dict(), "pool.digest", "sha256:" + "0" * 64)
    with pytest.raises(SelectionMismatchError, match=_exactly(
        "The pool's content differs from the one the selection of the manifest was made on (columns ['embedding']: "
        f"digest {tiny.pool['digest'][:19]}... != sha256:{'0' * 12}...). "
        "Pass the same pool, unchanged and in the same row order."
    )):
        Manifest.from_dict(data).check_pool(tiny_pool)


def test_check_pool_of_a_format_1_manifest_checks_what_it_can_and_warns_about_the_rest(tiny, tiny_pool, caplog):
    data = _edit(_edit(_edit(tiny.to_dict(), "format_version", 1), "clusters_digest", None), "pool.column_digests", ...)
    old = Manifest.from_dict(data, origin="old.json")
    with caplog.at_level(logging.WARNING, logger="hf_idsel.manifest"):
        old.check_pool(tiny_pool)
    assert caplog.messages == [
        "old.json has format_version 1: its digests cover the row ids and the pool's columns ['embedding'], not the "
        "columns ['text', 'score'] nor the cluster ids, which are returned unverified. Re-running the selection with "
        "load_selection(..., recompute=True) checks them."
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_idsel.manifest"):
        old.check_pool(tiny_pool.remove_columns(["text", "score"]))
    assert caplog.messages == [
        "old.json has format_version 1: its digests cover the row ids and the pool's columns ['embedding'], not the "
        "cluster ids, which are returned unverified. Re-running the selection with "
        "load_selection(..., recompute=True) checks them."
    ]
    moved = tiny_pool.map(lambda row, i: {"embedding": [9.0, 9.0] if i == 0 else row["embedding"]}, with_indices=True)
    with pytest.raises(SelectionMismatchError, match=r"^The pool's content differs .* of old\.json .*\(columns \['embedding'\]: digest sha256:"):
        old.check_pool(moved)
    with pytest.raises(SelectionMismatchError, match="has 11 rows"):
        old.check_pool(tiny_pool.select(range(11)))
    with pytest.raises(SelectionMismatchError, match=r"lacks columns \['embedding'\]"):
        old.check_pool(tiny_pool.remove_columns("embedding"))


# ---- check_fields: a clean error naming the field, for every malformed one ----

_BIG = 2**62


_MALFORMED = [
        ("format_version", "2", "`format_version`='2' must be a positive int."),
        ("format_version", 0, "`format_version`=0 must be a positive int."),
        ("format_version", True, "`format_version`=True must be a positive int."),
        ("seed", ..., "missing fields ['seed']."),
        ("clusters_digest", None, "missing fields ['clusters_digest']."),
        ("arguments", [], "`arguments`=[] must be a JSON object."),
        ("k_selection", "fixed", "`k_selection`='fixed' must be a JSON object."),
        ("budget", 4, "`budget`=4 must be a JSON object."),
        ("render", "chat", "`render`='chat' must be a JSON object or null."),
        ("encoder", ["e"], "`encoder`=['e'] must be a JSON object or null."),
        ("dedup", 0.9, "`dedup`=0.9 must be a JSON object or null."),
        ("versions", None, "`versions`=None must be a JSON object."),
        ("method", 1, "`method`=1 must be a string."),
        ("created_at", 0, "`created_at`=0 must be a string."),
        ("selected_digest", None, "`selected_digest`=None must be a 'sha256:...' string."),
        ("clusters_digest", 5, "`clusters_digest`=5 must be a 'sha256:...' string."),
        ("seed", "7", "`seed`='7' must be an int."),
        ("seed", True, "`seed`=True must be an int."),
        ("seed", 7.0, "`seed`=7.0 must be an int."),
        ("pool", [], "`pool`=[] must be a JSON object."),
        ("pool.fingerprint", ..., "`pool` lacks `fingerprint`."),
        ("pool.num_rows", ..., "`pool` lacks `num_rows`."),
        ("pool.digest", ..., "`pool` lacks `digest`."),
        ("pool.digest_columns", ..., "`pool` lacks `digest_columns`."),
        ("pool.num_rows", -1, f"`pool.num_rows`=-1 must be an int in [0, {_BIG}]."),
        ("pool.num_rows", _BIG + 1, f"`pool.num_rows`={_BIG + 1} must be an int in [0, {_BIG}]."),
        ("pool.num_rows", 12.0, f"`pool.num_rows`=12.0 must be an int in [0, {_BIG}]."),
        ("pool.num_rows", True, f"`pool.num_rows`=True must be an int in [0, {_BIG}]."),
        ("pool.digest", 0, "`pool.digest`=0 must be a 'sha256:...' string."),
        ("pool.fingerprint", 0, "`pool.fingerprint`=0 must be a string."),
        ("pool.name", 0, "`pool.name`=0 must be a string or null."),
        ("pool.digest_columns", "embedding", "`pool.digest_columns`='embedding' must be a list of column names."),
        ("pool.digest_columns", [0], "`pool.digest_columns`=[0] must be a list of column names."),
        ("pool.source", "hub", "`pool.source`='hub' must be a JSON object or null."),
        ("pool.source", {"repo_id": "a/b", "revision": 3}, "`pool.source.revision`=3 must be a string or null."),
        ("pool.column_digests", ..., "`pool` lacks `column_digests`."),
        ("pool.column_digests", ["sha256:"], "`pool.column_digests`=['sha256:'] must map column names to digests."),
        ("pool.column_digests", {"embedding": 1}, "`pool.column_digests`={'embedding': 1} must map column names to digests."),
        ("pool.column_digests", {"text": "sha256:"}, "`pool.column_digests` lacks the columns ['embedding'] of `pool.digest_columns`."),
        ("k", 0, "`k`=0 must be an int in [1, 12]."),
        ("k", 13, "`k`=13 must be an int in [1, 12]."),
        ("k", "3", "`k`='3' must be an int in [1, 12]."),
        ("k", 10**5000, "`k`=<int too large to print> must be an int in [1, 12]."),
        ("cluster_sizes", "4,4,4", "`cluster_sizes`='4,4,4' must be a list of ints."),
        ("selected_per_cluster", [1, 2, 1.0], "`selected_per_cluster`=[1, 2, 1.0] must be a list of ints."),
        ("selected_indices", [1, 5, 6, True], "`selected_indices`=[1, 5, 6, True] must be a list of ints."),
        ("selected_clusters", None, "`selected_clusters`=None must be a list of ints."),
        (
            "selected_indices", list(range(29)) + ["x"],
            f"`selected_indices`={repr(list(range(29)) + ['x'])[:57]}... must be a list of ints.",
        ),
        ("cluster_sizes", [4, 8], "`cluster_sizes` has 2 entries; `k`=3 needs one per cluster."),
        ("selected_per_cluster", [1, 2, 1, 0], "`selected_per_cluster` has 4 entries; `k`=3 needs one per cluster."),
        ("cluster_sizes", [4, 4, 5], "`cluster_sizes` must be non-negative and sum to `pool.num_rows`=12."),
        ("cluster_sizes", [4, 9, -1], "`cluster_sizes` must be non-negative and sum to `pool.num_rows`=12."),
        ("selected_clusters", [0, 1, 1], "`selected_clusters` has 3 entries and `selected_indices` 4; they must align."),
        ("selected_indices", [-1, 5, 6, 9], "`selected_indices[0]`=-1 is not a row of the 12-row pool."),
        ("selected_indices", [1, 5, 6, 12], "`selected_indices[3]`=12 is not a row of the 12-row pool."),
        ("selected_indices", [5, 1, 6, 9], "`selected_indices` must be strictly ascending (index 1 is not)."),
        ("selected_indices", [1, 6, 6, 9], "`selected_indices` must be strictly ascending (index 2 is not)."),
        ("selected_indices", [1, 5, 9, 6], "`selected_indices` must be strictly ascending (index 3 is not)."),
        ("selected_clusters", [-1, 1, 1, 2], "`selected_clusters[0]`=-1 is not a cluster id in [0, k=3)."),
        ("selected_clusters", [0, 1, 1, 3], "`selected_clusters[3]`=3 is not a cluster id in [0, k=3)."),
        ("selected_per_cluster", [1, 1, 2], "`selected_per_cluster` does not count the `selected_clusters`."),
        ("cluster_sizes", [4, 1, 7], "`selected_per_cluster` exceeds `cluster_sizes`."),
        ("decontamination", [0], "`decontamination`=[0] must be a JSON object or null."),
        ("target", "gsm8k", "`target`='gsm8k' must be a JSON object or null."),
        ("budget.rows", -1, f"`budget.rows`=-1 must be a number in [0, {_BIG}] or null."),
        ("budget.tokens", _BIG + 1, f"`budget.tokens`={_BIG + 1} must be a number in [0, {_BIG}] or null."),
        ("budget.requested", float("inf"), f"`budget.requested`=inf must be a number in [0, {_BIG}] or null."),
        ("cluster_map", "abc", "`cluster_map`='abc' must be null or one [x, y] pair of numbers per cluster (k=3)."),
        ("cluster_map", [[0, 0], [1, 1]], "`cluster_map`=[[0, 0], [1, 1]] must be null or one [x, y] pair of numbers per cluster (k=3)."),
]


@pytest.mark.parametrize("path, value, message", _MALFORMED, ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(_MALFORMED)])
def test_malformed_fields_are_refused_by_name(tiny, path, value, message):
    data = _edit(tiny.to_dict(), path, value)
    with pytest.raises(InvalidArgumentError, match=_invalid(message, "m.json")):
        Manifest.from_dict(data, origin="m.json")
    with pytest.raises(InvalidArgumentError, match=_invalid(message, "m.json")):
        check_fields(data, "m.json")


def _decontaminated(tiny_pool, **record) -> dict:
    """The tiny manifest after decontamination removed rows 0 and 2 (cluster 0: 2 rows left), with `record`'s fields
    changed."""
    removal = {"removed": 2, "removed_indices": [0, 2], "matched_items": [[0], [3]], "ngram_overlap": [1.0, 0.6],
               "cosine": [None, 0.97], "nearest_clusters": [0, 0]}
    removal.update(record)
    return _tiny_manifest(tiny_pool, decontamination=removal, cluster_sizes=[2, 4, 4]).to_dict()


_BAD_REMOVALS = [
    (dict(removed_indices="0,2"), "`decontamination.removed_indices`='0,2' must be a list of ints."),
    (dict(removed_indices=[0, 2.0]), "`decontamination.removed_indices`=[0, 2.0] must be a list of ints."),
    (dict(removed=3), "`decontamination.removed`=3 must count `removed_indices`."),
    (dict(removed=None), "`decontamination.removed`=None must count `removed_indices`."),
    (dict(removed_indices=[2, 0]), "`decontamination.removed_indices` must be ascending rows of the 12-row pool."),
    (dict(removed_indices=[0, 0]), "`decontamination.removed_indices` must be ascending rows of the 12-row pool."),
    (dict(removed_indices=[-1, 2]), "`decontamination.removed_indices` must be ascending rows of the 12-row pool."),
    (dict(removed_indices=[0, 12]), "`decontamination.removed_indices` must be ascending rows of the 12-row pool."),
    (dict(matched_items=[[0]]), "`decontamination.matched_items` must be a list with one entry per removed row."),
    (dict(ngram_overlap=None), "`decontamination.ngram_overlap` must be a list with one entry per removed row."),
    (dict(cosine=[0.9, 0.97, 0.99]), "`decontamination.cosine` must be a list with one entry per removed row."),
    (dict(nearest_clusters=[0]), "`decontamination.nearest_clusters`=[0] must hold one cluster id in [0, 3) per removed row."),
    (dict(nearest_clusters=[0, 3]), "`decontamination.nearest_clusters`=[0, 3] must hold one cluster id in [0, 3) per removed row."),
    (dict(nearest_clusters=[-1, 0]), "`decontamination.nearest_clusters`=[-1, 0] must hold one cluster id in [0, 3) per removed row."),
    (dict(nearest_clusters="0"), "`decontamination.nearest_clusters`='0' must hold one cluster id in [0, 3) per removed row."),
    (dict(removed_indices=[0, 1]), "`decontamination.removed_indices` and `selected_indices` share rows: a removed row was selected."),
    (dict(removed_indices=[0, 9]), "`decontamination.removed_indices` and `selected_indices` share rows: a removed row was selected."),
]


@pytest.mark.parametrize("changes, message", _BAD_REMOVALS, ids=[str(i) for i in range(len(_BAD_REMOVALS))])
def test_a_malformed_decontamination_record_is_refused_by_field(tiny_pool, changes, message):
    with pytest.raises(InvalidArgumentError, match=_invalid(message, "m.json")):
        Manifest.from_dict(_decontaminated(tiny_pool, **changes), origin="m.json")


def test_a_decontamination_record_at_its_edges_loads_and_its_rows_leave_the_cluster_sizes(tiny_pool):
    for changes in (dict(), dict(removed_indices=[0, 11]), dict(nearest_clusters=[0, 2]), dict(nearest_clusters=None)):
        data = _decontaminated(tiny_pool, **changes)
        assert Manifest.from_dict(data).decontamination == data["decontamination"], changes
    nothing = _tiny_manifest(tiny_pool, decontamination={"removed": 0, "removed_indices": [], "matched_items": [],
                                                          "ngram_overlap": [], "cosine": []}).to_dict()
    assert Manifest.from_dict(nothing).decontamination["removed"] == 0
    # The sizes count the rows left: the whole pool's sizes are refused once rows were removed.
    data = _decontaminated(tiny_pool)
    data["cluster_sizes"] = [4, 4, 4]
    with pytest.raises(InvalidArgumentError, match=re.escape(
        "`cluster_sizes` must be non-negative and sum to `pool.num_rows`=12 less the 2 rows decontamination removed."
    )):
        Manifest.from_dict(data)


@pytest.mark.parametrize(
    "descriptions, message",
    [
        ("terms", "`cluster_descriptions`='terms' must be null or a list of one entry per cluster (k=3)."),
        ([{"terms": [], "examples": []}] * 2, "must be null or a list of one entry per cluster (k=3)."),
        ([{"terms": [], "examples": []}, "x", {"terms": [], "examples": []}], "`cluster_descriptions[1]`='x' must be a JSON object."),
        ([{"terms": [], "examples": []}, {"terms": ["a", 1], "examples": []}, {"terms": [], "examples": []}],
         "`cluster_descriptions[1].terms`=['a', 1] must be a list of strings."),
        ([{"terms": [], "examples": []}, {"terms": []}, {"terms": [], "examples": []}],
         "`cluster_descriptions[1].examples`=None must be a list of strings."),
        ([{"terms": [], "examples": [], "example_rows": [1, "2"]}, {"terms": [], "examples": []}, {"terms": [], "examples": []}],
         "`cluster_descriptions[0].example_rows`=[1, '2'] must be a list of ints."),
    ],
)
def test_malformed_cluster_descriptions_are_refused_by_entry(tiny_pool, descriptions, message):
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        Manifest.from_dict(_tiny_manifest(tiny_pool, cluster_descriptions=descriptions).to_dict())
    ok = [{"terms": ["a"], "examples": ["x"], "example_rows": [1]}, {"terms": [], "examples": []}, {"terms": [], "examples": []}]
    assert Manifest.from_dict(_tiny_manifest(tiny_pool, cluster_descriptions=ok).to_dict()).cluster_descriptions == ok


def test_a_value_nested_deeper_than_any_field_is_refused_by_its_path(tiny):
    """16 levels are allowed (a manifest uses 5); the 17th is refused, naming where, through dicts and lists."""
    def nest(levels):
        value = 1
        for i in range(levels):
            value = {"a": value} if i % 2 else [value]
        return value

    ok = _edit(tiny.to_dict(), "arguments.extra", nest(14))  # its innermost value 16 levels below the top
    assert Manifest.from_dict(ok).arguments["extra"] == nest(14)
    deep = _edit(tiny.to_dict(), "arguments.extra", nest(15))
    path = "arguments.extra" + "".join(".a" if i % 2 else "[0]" for i in reversed(range(15)))
    with pytest.raises(InvalidArgumentError, match=re.escape(f"`{path}` is nested deeper than any manifest field (16 levels).")):
        Manifest.from_dict(deep)


def _targeted(tiny_pool, **record) -> dict:
    """The tiny manifest aimed at a 2-example target (kMQ, sharpness 2), with `record`'s fields changed."""
    target = {"num_rows": 2, "digest": "sha256:" + "0" * 64, "method": "kmq", "sharpness": 2.0,
              "cluster_affinity": [0.0, 0.5, 1.0], "tasks": {"a": 1, "b": 1}, "example_clusters": [0, 2]}
    target.update(record)
    arguments = {"budget": 4, "k": 3, "target_method": "kmq", "target_sharpness": 2.0}
    return _tiny_manifest(tiny_pool, target=target, arguments=arguments).to_dict()


_BAD_TARGETS = [
    (dict(num_rows=0), "`target` must hold `num_rows` (an int >= 1) and a 'sha256:...' `digest`, got {record}."),
    (dict(num_rows=2.0), "`target` must hold `num_rows` (an int >= 1) and a 'sha256:...' `digest`, got {record}."),
    (dict(digest="md5:00"), "`target` must hold `num_rows` (an int >= 1) and a 'sha256:...' `digest`, got {record}."),
    (dict(digest=None), "`target` must hold `num_rows` (an int >= 1) and a 'sha256:...' `digest`, got {record}."),
    (dict(method="nearest"), "`target.method`='nearest' must be 'kmq' or 'rds', as `arguments.target_method` says."),
    (dict(method="rds"), "`target.method`='rds' must be 'kmq' or 'rds', as `arguments.target_method` says."),
    (dict(cluster_affinity=[0.0, 0.5]), "`target.cluster_affinity`=[0.0, 0.5] must hold one number in [0, 1] per cluster (k=3)."),
    (dict(cluster_affinity=[0.0, 0.5, 1.01]), "`target.cluster_affinity`=[0.0, 0.5, 1.01] must hold one number in [0, 1] per cluster (k=3)."),
    (dict(cluster_affinity=[-0.01, 0.5, 1.0]), "`target.cluster_affinity`=[-0.01, 0.5, 1.0] must hold one number in [0, 1] per cluster (k=3)."),
    (dict(cluster_affinity="0.5"), "`target.cluster_affinity`='0.5' must hold one number in [0, 1] per cluster (k=3)."),
    (dict(sharpness=-1.0), "`target.sharpness`=-1.0 must be a number >= 0, as `arguments.target_sharpness` says."),
    (dict(sharpness=3.0), "`target.sharpness`=3.0 must be a number >= 0, as `arguments.target_sharpness` says."),
    (dict(sharpness=None), "`target.sharpness`=None must be a number >= 0, as `arguments.target_sharpness` says."),
    (dict(tasks={"a": 1}), "`target.tasks`={'a': 1} must count each task's examples, 2 in all."),
    (dict(tasks={"a": 2, "b": 0}), "`target.tasks`={'a': 2, 'b': 0} must count each task's examples, 2 in all."),
    (dict(tasks={"a": 1.0, "b": 1}), "`target.tasks`={'a': 1.0, 'b': 1} must count each task's examples, 2 in all."),
    (dict(tasks=[1, 1]), "`target.tasks`=[1, 1] must count each task's examples, 2 in all."),
    (dict(example_clusters=[0]), "`target.example_clusters`=[0] must hold each example's cluster in [0, 3)."),
    (dict(example_clusters=[0, 3]), "`target.example_clusters`=[0, 3] must hold each example's cluster in [0, 3)."),
    (dict(example_clusters=[-1, 2]), "`target.example_clusters`=[-1, 2] must hold each example's cluster in [0, 3)."),
    (dict(example_clusters=[0, True]), "`target.example_clusters`=[0, True] must hold each example's cluster in [0, 3)."),
    (dict(example_clusters="0,2"), "`target.example_clusters`='0,2' must hold each example's cluster in [0, 3)."),
]


@pytest.mark.parametrize("changes, message", _BAD_TARGETS, ids=[str(i) for i in range(len(_BAD_TARGETS))])
def test_a_malformed_target_record_is_refused_by_field(tiny_pool, changes, message):
    data = _targeted(tiny_pool, **changes)
    message = message.replace("{record}", repr(data["target"])[:57] + "...")  # the record, cut as errors quote values
    with pytest.raises(InvalidArgumentError, match=_invalid(message, "m.json")):
        Manifest.from_dict(data, origin="m.json")


def test_a_target_record_at_the_edges_of_each_range_loads(tiny_pool):
    ok = [
        dict(),
        dict(num_rows=1, tasks={"a": 1}, example_clusters=[1]),
        dict(cluster_affinity=[0, 1, 1.0]),  # ints count as numbers
        dict(tasks=None, example_clusters=None),  # records written before they existed
    ]
    for changes in ok:
        data = _targeted(tiny_pool, **changes)
        assert Manifest.from_dict(data).target == data["target"], changes
    flat = _targeted(tiny_pool, sharpness=0)  # 0 ** 0 is 1: kMQ's own weights
    flat["arguments"]["target_sharpness"] = 0
    assert Manifest.from_dict(flat).target["sharpness"] == 0
    # RDS takes no sharpness; kMQ without a recorded `target_sharpness` takes its own; no target is no check.
    rds = _targeted(tiny_pool, method="rds", sharpness=None)
    rds["arguments"]["target_method"] = "rds"
    assert Manifest.from_dict(rds).target["method"] == "rds"
    bare = _targeted(tiny_pool, sharpness=5.0)
    del bare["arguments"]["target_method"], bare["arguments"]["target_sharpness"]
    assert Manifest.from_dict(bare).target["sharpness"] == 5.0
    assert Manifest.from_dict(_tiny_manifest(tiny_pool).to_dict()).target is None


def test_check_fields_refuses_what_is_not_an_object_and_newer_formats(tiny):
    with pytest.raises(InvalidArgumentError, match=_invalid("expected a JSON object, got list.")):
        check_fields([])
    with pytest.raises(InvalidArgumentError, match=_invalid("expected a JSON object, got str.", "m.json")):
        Manifest.from_dict("{}", origin="m.json")
    newer = (
        "m.json has format_version 3; this hf_idsel reads up to 2. Upgrade hf_idsel."
    )
    with pytest.raises(InvalidArgumentError, match=_exactly(newer)):
        check_fields(_edit(tiny.to_dict(), "format_version", 3), "m.json")
    with pytest.raises(InvalidArgumentError, match=_invalid("missing fields ['pool', 'seed', 'k'].")):
        check_fields({k: v for k, v in tiny.to_dict().items() if k not in ("pool", "seed", "k")})
    with pytest.raises(InvalidArgumentError, match=_invalid("`arguments` must have string keys.")):
        check_fields(_edit(tiny.to_dict(), "arguments", {}) | {"arguments": {1: "x"}})
    # A too-long repr is cut to 60 characters.
    with pytest.raises(InvalidArgumentError, match=_invalid(f"`method`={'1' * 57}... must be a string.")):
        check_fields(_edit(tiny.to_dict(), "method", int("1" * 100)))
    with pytest.raises(InvalidArgumentError, match=_invalid(f"`method`={'1' * 60} must be a string.")):
        check_fields(_edit(tiny.to_dict(), "method", int("1" * 60)))
    with pytest.raises(InvalidArgumentError, match=_invalid(f"`method`={'1' * 57}... must be a string.")):
        check_fields(_edit(tiny.to_dict(), "method", int("1" * 61)))
    # k may not exceed the pool's rows, even for a pool of 1 row.
    one_row = dict(tiny.to_dict(), pool=dict(tiny.pool, num_rows=1), k=2, cluster_sizes=[1, 0],
                   selected_per_cluster=[1, 0], selected_indices=[0], selected_clusters=[0])
    with pytest.raises(InvalidArgumentError, match=_invalid("`k`=2 must be an int in [1, 1].")):
        check_fields(one_row)
    check_fields(dict(one_row, k=1, cluster_sizes=[1], selected_per_cluster=[1]))


def test_check_fields_accepts_the_edges_of_each_range(tiny, tiny_pool):
    data = tiny.to_dict()
    check_fields(data)
    for path, value in [
        ("pool.name", ...),
        ("pool.source", None),
        ("pool.source", {"repo_id": None}),
        ("pool.fingerprint", None),
        ("render", None),
        ("versions", ...),
        ("created_at", ...),
        ("arguments", {}),
        ("selected_indices", [0, 5, 6, 11]),  # the first and last rows
        ("selected_clusters", [0, 1, 2, 2]),  # with selected_per_cluster as below
        ("budget.rows", 0),  # budget numbers: [0, 2**62] or null
        ("budget.tokens", _BIG),
        ("budget.max_tokens", None),
        ("budget.note", -5),  # other budget keys are not row counts
        ("cluster_map", [[0, 0.5], [-1e300, 2], [3, 4]]),
    ]:
        edited_ = _edit(data, path, value)
        if path == "selected_clusters":
            edited_ = _edit(edited_, "selected_per_cluster", [1, 1, 2])
        check_fields(edited_)
    # The first format, without column digests or clusters_digest.
    v1 = _edit(_edit(_edit(data, "format_version", 1), "clusters_digest", ...), "pool.column_digests", ...)
    check_fields(v1)
    Manifest.from_dict(v1).check_integrity()
    # A cluster may hold the whole pool, and all its rows may be selected; k may equal the row count.
    whole = dict(data, cluster_sizes=[12, 0, 0], selected_per_cluster=[4, 0, 0], selected_clusters=[0, 0, 0, 0])
    check_fields(whole)
    all_rows = dict(data, cluster_sizes=[4, 4, 4], selected_per_cluster=[4, 4, 4],
                    selected_indices=list(range(12)), selected_clusters=[0] * 4 + [1] * 4 + [2] * 4)
    check_fields(all_rows)
    singletons = dict(data, k=12, cluster_sizes=[1] * 12, selected_per_cluster=[0, 1, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0],
                      selected_clusters=[1, 5, 6, 9])
    check_fields(singletons)
    # The largest row count a manifest may hold, and an empty pool with k=1.
    check_fields(dict(data, pool=dict(data["pool"], num_rows=2**62), k=1, cluster_sizes=[2**62],
                      selected_per_cluster=[4], selected_clusters=[0, 0, 0, 0]))
    check_fields(dict(data, pool=dict(data["pool"], num_rows=0), k=1, cluster_sizes=[0], selected_per_cluster=[0],
                      selected_indices=[], selected_clusters=[]))


def test_k_auto_silhouette_curve_is_verified_and_old_records_still_load(tiny):
    """k="auto" records the silhouette curve and the estimator's settings; the curve is checked on load, and the
    record of manifests written before (mode, candidates, silhouette only) still loads."""
    old = {"mode": "auto", "candidates": [2, 3, 4], "silhouette": {"2": 0.1, "3": 0.4, "4": -1.0}}
    new = old | {"chosen": 3, "standard_error": {"2": 0.0, "3": 0.0, "4": 0.0}, "grid": [2, 3, 4], "search": "coarse-to-fine",
                 "estimator": {"metric": "cosine", "clustering": "whole pool", "sample_size": 12, "min_rows_per_cluster": 16}}
    for record in (old, new):
        data = _edit(tiny.to_dict(), "k_selection", record)
        assert Manifest.from_dict(data, origin="m.json").k_selection == record
    for path, value, message in [
        ("k_selection.chosen", 4, "`k_selection.chosen`=4 must be the manifest's `k`=3."),
        ("k_selection.silhouette", {"2": 0.1, "three": 0.4}, "`k_selection.silhouette`={'2': 0.1, 'three': 0.4} must map each candidate k to a number."),
        ("k_selection.silhouette", {"2": float("nan")}, "`k_selection.silhouette`={'2': nan} must map each candidate k to a number."),
        ("k_selection.standard_error", {"2": "0"}, "`k_selection.standard_error`={'2': '0'} must map each candidate k to a number."),
        ("k_selection.candidates", [2, 4], "`k_selection.candidates` must be the candidates of `k_selection.silhouette`, ascending."),
        # A manifest given as a dict can hold keys JSON cannot: an int key is refused by name, not an AttributeError.
        ("k_selection.silhouette", {2: 0.1}, "`k_selection.silhouette`={2: 0.1} must map each candidate k to a number."),
    ]:
        data = _edit(_edit(tiny.to_dict(), "k_selection", new), path, value)
        with pytest.raises(InvalidArgumentError, match=_invalid(message, "m.json")):
            Manifest.from_dict(data, origin="m.json")


def test_k_auto_paper_rule_record_is_recomputed_from_its_curve_on_load(tiny):
    """The paper's rule records the best candidate, the curve's local maxima, the second seed's scores and their
    spread, and the near-ties: each is recomputed from the curve on load, so a record that does not follow from
    its own numbers is refused. Here the best (k=4) lost to the smaller near-tie k=3 (the manifest's k)."""
    spread = 0.01 / (2**0.5 * 0.6744897501960817)  # the median |difference| 0.01 between the two seeds' scores
    paper = {
        "mode": "auto", "rule": "paper", "candidates": [2, 3, 4], "silhouette": {"2": 0.1, "3": 0.4, "4": 0.41},
        "standard_error": {"2": 0.01, "3": 0.01, "4": 0.01}, "chosen": 3, "best": 4, "local_maxima": [4], "budget": 12,
        "range": {"lower": 2, "upper": 5, "fallback": True}, "grid": [2, 3, 4], "search": "coarse-to-fine",
        "estimator": {"metric": "cosine", "clustering": "whole pool", "sample_size": 12, "min_rows_per_cluster": 16},
        "seed_check": {"seed": 1, "silhouette": {"3": 0.39, "4": 0.42}, "spread": spread},
        "ties": {"z": 2.0, "tied": [3, 4], "rule": "smallest k"},
    }
    glob = {key: value for key, value in paper.items() if key not in ("seed_check", "ties")} | {
        "rule": "global", "silhouette": {"2": 0.1, "3": 0.4, "4": 0.31}, "best": 3, "local_maxima": [3]}
    sampled = paper | {"estimator": paper["estimator"] | {"clustering": "seeded sample", "search_rows": 131072}}
    smallest = paper | {"estimator": paper["estimator"] | {"sample_size": 1, "search_rows": 1}}  # the least rows counted
    # An exact tie for the highest score is the smaller k's, as the search breaks it.
    tie = glob | {"silhouette": {"2": 0.1, "3": 0.4, "4": 0.4}, "best": 3, "local_maxima": [3]}
    for record in (paper, glob, sampled, smallest, tie):
        data = _edit(tiny.to_dict(), "k_selection", record)
        assert Manifest.from_dict(data, origin="m.json").k_selection == record
    for base, path, value, message in [
        (paper, "k_selection.rule", "best", "`k_selection.rule`='best' must be one of ['paper', 'global']."),
        (paper, "k_selection.best", 3, "`k_selection.best`=3 is not the candidate with the highest silhouette."),
        (paper, "k_selection.local_maxima", [3], "`k_selection.local_maxima`=[3] are not the silhouette curve's."),
        (paper, "k_selection.seed_check.spread", 0.5, "`k_selection.seed_check.spread` is not the spread of its scores against the curve's."),
        (paper, "k_selection.seed_check.silhouette", {"3": 0.39, "9": 0.1}, "`k_selection.seed_check.spread` is not the spread of its scores against the curve's."),
        (paper, "k_selection.seed_check.silhouette", {"3": "high"}, "`k_selection.seed_check.silhouette`={'3': 'high'} must map each candidate k to a number."),
        (paper, "k_selection.seed_check.seed", 1.5, "`k_selection.seed_check`={'seed': 1.5, 'silhouette': {'3': 0.39, '4': 0.42}, 'spre... must hold an int `seed`, `silhouette` and a number `spread`."),
        (paper, "k_selection.ties.tied", [4], "`k_selection.ties.tied`=[4] must be the near-ties [3, 4], and k their smallest."),
        (paper, "k_selection.ties.z", 0.1, "`k_selection.ties.tied`=[3, 4] must be the near-ties [4], and k their smallest."),
        (paper, "k_selection.ties.rule", "largest k", "`k_selection.ties`={'z': 2.0, 'tied': [3, 4], 'rule': 'largest k'} needs `z`, rule 'smallest k', a seed check and every standard error."),
        (paper, "k_selection.standard_error", {"2": 0.01, "3": 0.01}, "`k_selection.ties`={'z': 2.0, 'tied': [3, 4], 'rule': 'smallest k'} needs `z`, rule 'smallest k', a seed check and every standard error."),
        (glob, "k_selection.silhouette", {"2": 0.1, "3": 0.4, "4": 0.41}, "`k_selection.best`=3 is not the candidate with the highest silhouette."),
        (glob | {"best": 4, "local_maxima": [4]}, "k_selection.silhouette", {"2": 0.1, "3": 0.4, "4": 0.41}, "`k_selection.best` must be the manifest's `k` under the rule 'global'."),
        (tie, "k_selection.best", 4, "`k_selection.best`=4 is not the candidate with the highest silhouette."),
        (paper, "k_selection.silhouette", ..., "`k_selection.silhouette` is missing: a k='auto' record holds the curve that chose k."),
        (paper, "k_selection.chosen", 4, "`k_selection.chosen`=4 must be the manifest's `k`=3."),
        (paper, "k_selection.seed_check.spread", spread * (1 + 1e-6), "`k_selection.seed_check.spread` is not the spread of its scores against the curve's."),
        # The card and report print the estimator's row counts: they are positive ints or the record is refused.
        (paper, "k_selection.estimator.search_rows", "many", "`k_selection.estimator`={'metric': 'cosine', 'clustering': 'whole pool', 'sample_... must hold a positive int `sample_size` (and `search_rows`)."),
        (paper, "k_selection.estimator.sample_size", 0, "`k_selection.estimator`={'metric': 'cosine', 'clustering': 'whole pool', 'sample_... must hold a positive int `sample_size` (and `search_rows`)."),
        (paper, "k_selection.estimator", [12], "`k_selection.estimator`=[12] must hold a positive int `sample_size` (and `search_rows`)."),
    ]:
        data = _edit(_edit(tiny.to_dict(), "k_selection", base), path, value)
        with pytest.raises(InvalidArgumentError, match=_invalid(message, "m.json")):
            Manifest.from_dict(data, origin="m.json")


# ---- numbers read from JSON: a map coordinate or a silhouette score is any JSON number ----
# A number is accepted when its float value is finite, and refused by name otherwise; never a TypeError or an
# OverflowError. A hypothesis test found `cluster_map` crashing `load_selection` on ints outside [-2**63, 2**64).

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from helpers import examples  # noqa: E402

# The smallest int that rounds past the largest float (round half to even): ints below it in size are finite.
_FLOAT_OVERFLOW = 2**1024 - 2**970
_AUTO_K = {"mode": "auto", "candidates": [2, 3, 4], "silhouette": {"2": 0.1, "3": 0.4, "4": -1.0}}


def _finite_as_float(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) < _FLOAT_OVERFLOW
    return value == value and abs(value) != float("inf")


def _with_number(tiny, field: str, value) -> dict:
    """`tiny` as a dict with `value` as the second cluster's x in `cluster_map`, or as k=3's silhouette score."""
    data = tiny.to_dict()
    if field == "cluster_map":
        data["cluster_map"] = [[0.5, -0.5], [value, 0.0], [-1.0, 2.0]]
    else:
        data["k_selection"] = dict(_AUTO_K, silhouette=dict(_AUTO_K["silhouette"], **{"3": value}))
    return data


@pytest.mark.parametrize("field", ["cluster_map", "k_selection"])
@pytest.mark.parametrize(
    "value",
    [
        pytest.param(v, id=name)
        for name, v in [
            ("0", 0), ("-7", -7), ("2**63-1", 2**63 - 1), ("2**63", 2**63), ("2**64", 2**64), ("-2**63-1", -(2**63) - 1),
            ("10**40", 10**40), ("largest-int", _FLOAT_OVERFLOW - 1), ("smallest-int", -(_FLOAT_OVERFLOW - 1)),
            ("1.5", 1.5), ("-0.0", -0.0), ("1e308", 1e308),
        ]
    ],
)
def test_any_finite_json_number_is_accepted(tiny, field, value):
    manifest = Manifest.load(json.dumps(_with_number(tiny, field, value)), origin="m.json")
    read = manifest.cluster_map[1][0] if field == "cluster_map" else manifest.k_selection["silhouette"]["3"]
    assert read == value and type(read) is type(value)


@pytest.mark.parametrize(
    "field, message",
    [
        ("cluster_map", "`cluster_map`={} must be null or one [x, y] pair of numbers per cluster (k=3)."),
        ("k_selection", "`k_selection.silhouette`={} must map each candidate k to a number."),
    ],
    ids=["cluster_map", "k_selection"],
)
@pytest.mark.parametrize(
    "value",
    [
        pytest.param(v, id=name)
        for name, v in [
            ("past-largest-int", _FLOAT_OVERFLOW), ("past-smallest-int", -_FLOAT_OVERFLOW), ("10**400", 10**400),
            ("inf", float("inf")), ("-inf", float("-inf")), ("nan", float("nan")), ("true", True), ("false", False),
            ("text", "1"), ("null", None),
        ]
    ],
)
def test_a_number_past_the_float_range_or_not_a_number_is_refused_by_name(tiny, field, message, value):
    data = _with_number(tiny, field, value)
    before, after = _invalid(message, "m.json").split(re.escape("{}"))
    refused = f"{before}.+{after}"  # the value as written, cut to 60 characters
    with pytest.raises(InvalidArgumentError, match=refused):
        Manifest.from_dict(data, origin="m.json")
    if not isinstance(value, str):  # the same through JSON text (NaN and Infinity included: `json` reads them)
        with pytest.raises(InvalidArgumentError, match=refused):
            Manifest.load(json.dumps(data), origin="m.json")


_JSON_NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=2**63 - 4, max_value=2**1100),
    st.integers(min_value=-(2**1100), max_value=-(2**63) + 4),
    st.sampled_from([2**64, -(2**63) - 1, _FLOAT_OVERFLOW - 1, _FLOAT_OVERFLOW, -_FLOAT_OVERFLOW, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)


@settings(max_examples=examples(100), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["cluster_map", "k_selection"]), value=_JSON_NUMBERS)
def test_load_selection_of_a_manifest_with_any_json_number_loads_or_refuses_it_cleanly(tiny, tiny_pool, tmp_path, field, value):
    """The property test that found the crash: any JSON number in a map coordinate or a silhouette score gives the
    recorded rows or an `InvalidArgumentError` naming the field, never a TypeError or an OverflowError."""
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(_with_number(tiny, field, value)), encoding="utf-8")
    if _finite_as_float(value):
        assert load_selection(str(path), tiny_pool)["source_index"] == [1, 5, 6, 9]
    else:
        named = "`cluster_map`=" if field == "cluster_map" else "`k_selection.silhouette`="
        with pytest.raises(InvalidArgumentError, match=re.escape(named)):
            load_selection(str(path), tiny_pool)
