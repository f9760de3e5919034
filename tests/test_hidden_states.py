"""The hidden-state encoder (RDS+, arXiv 2503.01807): pooling, identity and cache keys, the manifest
record, projections, and a selection with it; on tests/helpers.py's tiny Llama, one real SmolLM2 run."""

import copy
import logging

import datasets
import numpy as np
import pytest
import torch

from helpers import make_pool, make_tiny_llama, make_trainer, qa_pool, save_tiny_llama, train_tiny
from hf_idsel import diverse_select, load_selection
from hf_idsel.embed import embed_dataset, embedding_cache_key, encoder_identity
from hf_idsel.errors import InvalidArgumentError
from hf_idsel.hidden_states import HiddenStateEncoder, _pool
from hf_idsel.render import resolve_render_options


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_llama(seed=0)


@pytest.fixture(scope="module")
def tiny_dir(tiny, tmp_path_factory):
    return save_tiny_llama(*tiny, tmp_path_factory.mktemp("tiny-llama"))


def test_weighted_mean_weighs_tokens_by_position_and_ignores_padding():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)  # values 0..3 and 4..7
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    weighted = _pool(hidden, mask, "weighted_mean")[:, 0]
    # Weights 1,2,3,4 / 10 over 0..3 and 1,2 / 3 over 4,5 (the padded 6, 7 never count).
    assert torch.allclose(weighted, torch.tensor([(0 * 1 + 1 * 2 + 2 * 3 + 3 * 4) / 10, (4 * 1 + 5 * 2) / 3]))
    assert torch.allclose(_pool(hidden, mask, "mean")[:, 0], torch.tensor([1.5, 4.5]))
    assert torch.allclose(_pool(hidden, mask, "last")[:, 0], torch.tensor([3.0, 5.0]))


def test_vectors_do_not_depend_on_batching_or_padding(tiny):
    model, tokenizer = tiny
    encoder = HiddenStateEncoder(model, tokenizer=tokenizer)
    texts = [f"What colour is thing {i}?" + " very" * i for i in range(9)]
    one_by_one = np.concatenate([encoder.encode([t], batch_size=1) for t in texts])
    batched = encoder.encode(texts, batch_size=4)
    assert batched.shape == (9, 32) and batched.dtype == np.float32
    assert np.allclose(np.linalg.norm(batched, axis=1), 1, atol=1e-5)
    assert np.allclose(one_by_one, batched, atol=1e-5)


def test_embed_dataset_caches_and_records_the_settings(tiny_dir, cache_dir, caplog):
    pool = qa_pool()
    options = resolve_render_options(pool.column_names)
    first, identity = embed_dataset(pool, options, encoder=f"hidden-states:{tiny_dir}", cache_dir=cache_dir)
    assert first.shape == (40, 32)
    assert identity.id == f"hidden-states:{tiny_dir}"
    assert dict(identity.settings) == {"layer": -1, "pooling": "weighted_mean", "max_length": 512}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hf_idsel"):
        second, _ = embed_dataset(pool, options, encoder=HiddenStateEncoder(tiny_dir), cache_dir=cache_dir)
    assert "Loaded embeddings from cache" in caplog.text and "Loading reference model" not in caplog.text
    assert np.array_equal(first, second)
    # Each setting is its own cache entry with its own vectors.
    keys = {embedding_cache_key(pool, identity, options)}
    for other in (HiddenStateEncoder(tiny_dir, layer=1), HiddenStateEncoder(tiny_dir, pooling="mean"),
                  HiddenStateEncoder(tiny_dir, max_length=64)):
        keys.add(embedding_cache_key(pool, encoder_identity(other), options))
    assert len(keys) == 4
    mean, _ = embed_dataset(pool, options, encoder=HiddenStateEncoder(tiny_dir, pooling="mean"), cache_dir=cache_dir)
    assert not np.allclose(first, mean)


def test_a_trained_model_does_not_read_the_untrained_models_cache(tiny):
    model, tokenizer = tiny
    pool = qa_pool(8)
    options = resolve_render_options(pool.column_names)
    trained = train_tiny(copy.deepcopy(model), tokenizer, ["The sky is blue."] * 4, steps=3)
    before = encoder_identity(HiddenStateEncoder(model, tokenizer=tokenizer))
    after = encoder_identity(HiddenStateEncoder(trained, tokenizer=tokenizer))
    assert before.revision != after.revision
    assert embedding_cache_key(pool, before, options) != embedding_cache_key(pool, after, options)


def test_selection_is_deterministic_and_the_manifest_names_the_encoder(tiny_dir, cache_dir):
    pool = qa_pool()
    kwargs = dict(k=4, seed=1, encoder=f"hidden-states:{tiny_dir}", return_manifest=True)
    first, manifest = diverse_select(pool, 12, cache_dir=cache_dir, **kwargs)
    datasets.disable_caching()
    try:  # recomputed from scratch, not read back
        second, again = diverse_select(pool, 12, **kwargs)
    finally:
        datasets.enable_caching()
    assert len(first) == 12 and first["source_index"] == second["source_index"]
    assert manifest.selected_digest == again.selected_digest
    assert manifest.encoder == {
        "id": f"hidden-states:{tiny_dir}", "revision": manifest.encoder["revision"], "dim": 32,
        "layer": -1, "pooling": "weighted_mean", "max_length": 512,
    }
    assert manifest.arguments["encoder"] == f"hidden-states:{tiny_dir}"


def test_a_rerun_from_the_manifest_embeds_with_the_recorded_layer_pooling_and_projection(tiny_dir, cache_dir):
    pool = qa_pool()
    encoder = HiddenStateEncoder(tiny_dir, layer=1, pooling="mean", max_length=64, projection="random", dim=8, seed=2)
    first, manifest = diverse_select(pool, 12, k=4, seed=1, encoder=encoder, cache_dir=cache_dir, return_manifest=True)
    assert manifest.encoder["layer"] == 1 and manifest.encoder["projection"] == "random"
    # The caller names the model (consent to load it); the settings come from the manifest.
    again = load_selection(manifest, pool=pool, recompute=True, encoder=f"hidden-states:{tiny_dir}")
    assert again["source_index"] == first["source_index"] and again["cluster"] == first["cluster"]
    # The default settings select other rows: a re-run that ignored the recorded ones would not match.
    default, _ = diverse_select(pool, 12, k=4, seed=1, encoder=f"hidden-states:{tiny_dir}", cache_dir=cache_dir, return_manifest=True)
    assert default["source_index"] != first["source_index"]


@pytest.mark.parametrize(
    "projection, dim, expected",
    # 40 rows span 39 directions once centred: whitening never keeps more (a zero variance cannot be whitened).
    [("whiten", 8, 8), ("random", 16, 16), ("whiten", None, 32), ("whiten", 64, 32)],
)
def test_projection_is_fitted_on_the_pool_seeded_and_recorded(tiny_dir, cache_dir, projection, dim, expected):
    pool = qa_pool()
    options = resolve_render_options(pool.column_names)
    raw, _ = embed_dataset(pool, options, encoder=HiddenStateEncoder(tiny_dir), cache_dir=cache_dir)
    encoder = HiddenStateEncoder(tiny_dir, projection=projection, dim=dim, seed=3)
    projected, identity = embed_dataset(pool, options, encoder=encoder, cache_dir=cache_dir)
    assert projected.shape == (40, expected)
    assert np.allclose(np.linalg.norm(projected, axis=1), 1, atol=1e-5)
    again, _ = embed_dataset(pool, options, encoder=HiddenStateEncoder(tiny_dir, projection=projection, dim=dim, seed=3), cache_dir=cache_dir)
    assert np.array_equal(projected, again)
    assert dict(identity.settings)["projection"] == projection and dict(identity.settings)["projection_seed"] == 3
    if projection == "whiten":
        # Whitened: the pool's centred vectors have (nearly) uncorrelated, equal-variance coordinates,
        # which raw hidden states (dominated by a few directions) do not.
        def spread(x):
            eig = np.linalg.eigvalsh(np.cov(x.T))[-min(8, expected):]
            return eig.max() / eig.min()
        assert spread(projected) < spread(raw)
    else:
        other, _ = embed_dataset(pool, options, encoder=HiddenStateEncoder(tiny_dir, projection="random", dim=16, seed=4), cache_dir=cache_dir)
        assert not np.allclose(projected, other)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pooling="max"), "`pooling`"),
        (dict(layer=-2), "`layer`"),
        (dict(max_length=0), "`max_length`"),
        (dict(projection="pca"), "`projection`"),
        (dict(dim=8), "`dim`.*projection"),
    ],
)
def test_bad_settings_are_refused_before_loading(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        HiddenStateEncoder("does/not-matter", **kwargs)


def test_a_layer_past_the_models_depth_is_refused_naming_it(tiny):
    model, tokenizer = tiny
    with pytest.raises(InvalidArgumentError, match="`layer`=3.*2 layers"):
        HiddenStateEncoder(model, tokenizer=tokenizer, layer=3).encode(["hello"])


def test_an_empty_model_after_the_prefix_is_refused():
    with pytest.raises(InvalidArgumentError, match="names no model"):
        encoder_identity("hidden-states:")


@pytest.mark.slow
def test_smollm2_hidden_states_group_rows_by_topic(smollm2, cache_dir):
    model, tokenizer = smollm2
    pool = qa_pool(24)
    options = resolve_render_options(pool.column_names)
    vectors, identity = embed_dataset(pool, options, encoder=HiddenStateEncoder(model, tokenizer=tokenizer), cache_dir=cache_dir)
    assert vectors.shape == (24, model.config.hidden_size)
    topic = np.arange(24) % 4
    sims = vectors @ vectors.T
    same = sims[topic[:, None] == topic[None, :]].mean()
    other = sims[topic[:, None] != topic[None, :]].mean()
    assert same > other


def test_the_trainer_embeds_the_pool_with_the_model_before_training(tmp_path):
    from helpers import make_tiny_llama as fresh

    from hf_idsel.cache import parameter_checksum
    from hf_idsel.pipeline import cluster_pool

    model, tokenizer = fresh()
    untrained = parameter_checksum(model)
    model.train()
    trainer = make_trainer(tmp_path, model=model, embedding_column=None, embed_with_model=True, budget=16, rounds=2)
    assert model.training  # embedding left the model in the mode it had
    assert trainer.encoder_info["id"].startswith("hidden-states:") and trainer.encoder_info["revision"] == untrained
    assert trainer.encoder_info["dim"] == 32 and trainer.encoder_info["pooling"] == "weighted_mean"
    # The clusters are those of the untrained model's vectors, and stay so for the run.
    pool = make_pool()
    options = trainer._render
    vectors, _ = embed_dataset(pool, options, encoder=HiddenStateEncoder(fresh()[0], tokenizer=tokenizer))
    labels = cluster_pool(vectors, 4, seed=trainer.args.selection_seed)[0].labels
    assert np.array_equal(trainer.labels, labels)
    trainer.train()
    assert parameter_checksum(trainer.model) != untrained
    manifest = trainer.selection_manifest()
    assert manifest.arguments["embed_with_model"] is True and manifest.encoder["revision"] == untrained
    assert len(manifest.selected_indices) == 16


def test_embed_with_model_and_embedding_column_are_exclusive(tmp_path):
    from hf_idsel import IterativeSelectionConfig

    with pytest.raises(InvalidArgumentError, match="embed_with_model.*embedding_column"):
        IterativeSelectionConfig(
            output_dir=str(tmp_path), bf16=False, use_cpu=True, embed_with_model=True, embedding_column="embedding"
        )


def test_two_ranks_embed_their_shares_and_hold_the_one_process_vectors(tiny_dir, tmp_path):
    import glob
    import os
    import socket
    import subprocess
    import sys

    out, cache = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    here = os.path.dirname(__file__)
    path = [os.path.dirname(here), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(filter(None, path))}
    result = subprocess.run(
        [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", port, os.path.join(here, "ddp_hidden_run.py"), tiny_dir, str(out), str(cache),
        ],
        env=env, capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [np.load(out / f"rank_{i}.npy") for i in range(2)]
    # 100 rows in chunks of 32: rank 0 embedded chunks 0-1 (rows 0-64), rank 1 chunks 2-3 (rows 64-100).
    shards = sorted(os.path.basename(p).split("-rows")[1] for p in glob.glob(str(cache / "embeddings-*-rows*.arrow")))
    assert shards == ["0-64.arrow", "64-100.arrow"]
    pool = qa_pool(100)
    single, _ = embed_dataset(
        pool, resolve_render_options(pool.column_names), encoder=HiddenStateEncoder(tiny_dir, projection="whiten", dim=16, seed=1),
        cache_dir=str(tmp_path / "single"), map_batch_size=32,
    )
    assert ranks[0].shape == (100, 16)
    assert np.array_equal(ranks[0], ranks[1]) and np.array_equal(ranks[0], single)


def test_whitening_a_pool_smaller_than_the_hidden_size_keeps_finite_vectors(tiny_dir, cache_dir):
    pool = qa_pool(10)
    vectors, _ = embed_dataset(
        pool, resolve_render_options(pool.column_names), encoder=HiddenStateEncoder(tiny_dir, projection="whiten"),
        cache_dir=cache_dir,
    )
    assert vectors.shape == (10, 9) and np.isfinite(vectors).all()


def test_a_streamed_pool_gets_the_same_projection_as_the_pool_in_memory(tiny_dir, cache_dir, tmp_path):
    """The projection is fitted on the whole pool: a streamed pool (vectors gathered batch by batch) selects the
    same rows as the same pool in memory, projection included."""
    pool = qa_pool()
    pool.to_json(str(tmp_path / "pool.jsonl"))
    stream = datasets.load_dataset("json", data_files=str(tmp_path / "pool.jsonl"), split="train", streaming=True)

    def pick(data):
        encoder = HiddenStateEncoder(tiny_dir, projection="random", dim=16, seed=3)
        _, manifest = diverse_select(data, 10, k=4, encoder=encoder, cache_dir=cache_dir, return_manifest=True)
        return manifest

    in_memory, streamed = pick(pool), pick(stream)
    assert streamed.selected_indices == in_memory.selected_indices and streamed.cluster_sizes == in_memory.cluster_sizes
    assert streamed.encoder["dim"] == 16
