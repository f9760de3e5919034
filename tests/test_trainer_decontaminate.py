"""An iterative run with `exclude_dataset`: its manifests, report, dataset card and model card record the
decontamination and the cluster map exactly as a static selection's do."""

import json
import os

import numpy as np
import pytest
from huggingface_hub import DatasetCard, ModelCard

from helpers import make_pool, make_trainer, single_thread, unit_rows
from hf_idsel import InvalidArgumentError, diverse_select
from hf_idsel.cli import main
from hf_idsel.manifest import Manifest
from hf_idsel.hub_layout import STAGING_DIR


def arithmetic_exclude(pool):
    """Two arithmetic rows of the pool ("What is 2 plus 2? It is 4."), each unique, as an evaluation set whose vectors
    lie far from every pool row: only the n-gram test can match them."""
    vectors = np.asarray(pool["embedding"])
    away = unit_rows(-vectors.mean(axis=0, keepdims=True))
    assert (vectors @ away.T).max() < 0.95
    return pool.select([26, 33]).remove_columns(["embedding"]).add_column("embedding", away.tolist() * 2)


def test_an_iterative_run_records_its_decontamination_and_map_in_manifests_cards_and_the_hub(hub, tmp_path, capsys):
    pool = make_pool()
    model_repo = hub.repo("decontaminated-sft")
    with single_thread():
        trainer = make_trainer(
            tmp_path, pool=pool, budget=24, rounds=2, scorer="loss", exclude_dataset=arithmetic_exclude(pool),
            push_to_hub=True, hub_model_id=model_repo, hub_license="apache-2.0", hub_strategy="end",
        )
        trainer.train()
        trainer.save_model()
        trainer.push_to_hub()
    record = trainer.decontamination
    assert record["removed_indices"] == [26, 33] and record["ngram_threshold"] == 0.6
    assert not {26, 33} & set(trainer.selection.selected())

    # Every staged manifest, the default one and each round's, carries the record and the map, and loads back verified.
    staged = os.path.join(trainer.args.output_dir, STAGING_DIR)
    for name in ("manifest.json", "manifests/round_1.json", "manifests/round_2.json"):
        manifest = Manifest.load(os.path.join(staged, name))
        assert manifest.decontamination == record, name
        assert manifest.cluster_map == trainer.cluster_map and len(manifest.cluster_map) == trainer.k
        assert sum(manifest.cluster_sizes) == len(pool) - 2  # the rows left, as in a static manifest
    everything = Manifest.load(os.path.join(staged, "manifest.json"))
    assert everything.selected_indices == sorted(trainer.selection.selected())
    # A manifest claiming a removed row was drawn is refused on load.
    data = json.loads(open(os.path.join(staged, "manifest.json")).read())
    data["decontamination"]["removed_indices"] = [26, everything.selected_indices[0]]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(InvalidArgumentError, match="decontamination"):
        Manifest.load(str(bad))

    # `hf-idsel report --map` works on the run's output folder.
    png = tmp_path / "map.png"
    assert main(["report", trainer.args.output_dir, "--map", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "decontamination: dropped 2 pool rows" in capsys.readouterr().out

    # The pushed dataset repo: manifest, map and a card with the Decontamination section.
    dataset_repo = f"{model_repo}-selection"
    files = set(hub.server.files(dataset_repo))
    assert {"manifest.json", "manifests/round_2.json", "cluster_map.png", "selection.png"} <= files
    card = DatasetCard.load(dataset_repo)
    assert "### Decontamination" in card.text and "![Map of the pool's clusters" in card.text
    assert "dropped 2 pool rows matching items of the evaluation set" in card.text
    assert "| 26 | 0 | 1.00 |" in card.text and "| 33 | 1 | 1.00 |" in card.text

    # The model card names the decontamination and shows the map from the dataset repo.
    model_card = ModelCard.load(model_repo)
    assert "| decontamination | dropped 2 pool rows matching items of the evaluation set" in model_card.text
    assert f"https://huggingface.co/datasets/{dataset_repo}/resolve/main/cluster_map.png" in model_card.text


def test_the_trainer_uses_the_thresholds_it_is_given_and_refuses_bad_ones_before_embedding(tmp_path):
    pool = make_pool()
    exclude = arithmetic_exclude(pool)
    with single_thread():
        # The n-gram test alone, on 4-grams, at a share of 1: the exact copies share every 4-gram of their item.
        trainer = make_trainer(tmp_path, pool=pool, budget=24, rounds=2, exclude_dataset=exclude, exclude_ngram=4,
                               exclude_ngram_threshold=1.0, exclude_cosine_threshold=None)
        record = trainer.decontamination
        assert (record["ngram"], record["ngram_threshold"], record["cosine_threshold"]) == (4, 1.0, None)
        assert record["removed_indices"] == [26, 33] and record["cosine"] == [None, None]
        with pytest.raises(InvalidArgumentError, match="exclude_ngram_threshold"):
            make_trainer(tmp_path / "bad", pool=pool, exclude_dataset=exclude, exclude_ngram_threshold=1.5)
        with pytest.raises(InvalidArgumentError, match="`exclude_dataset`"):
            make_trainer(tmp_path / "bad2", pool=pool, exclude_dataset=exclude.select_columns(["embedding"]))


def test_embed_with_model_embeds_the_evaluation_set_with_the_same_model_as_the_pool(tmp_path):
    """With `embed_with_model`, the cosine test compares the evaluation set's hidden states with the pool's (same model,
    same space): an exact copy of a pool row is at cosine 1 and dropped, nothing else is."""
    pool = make_pool().remove_columns(["embedding"])
    exclude = pool.select([26, 33])
    with single_thread():
        trainer = make_trainer(tmp_path, pool=pool, budget=24, rounds=2, embedding_column=None, embed_with_model=True,
                               exclude_dataset=exclude, exclude_ngram_threshold=None, exclude_cosine_threshold=0.9999)
        record = trainer.decontamination
    assert trainer.encoder_info["dim"] == trainer.model.config.hidden_size  # the pool was embedded by the model
    assert 26 in record["removed_indices"] and 33 in record["removed_indices"]
    assert all(c >= 0.9999 for c in record["cosine"])


def test_the_trainer_decontaminates_and_clusters_as_diverse_select_does(tmp_path):
    """One decontamination method for static and iterative selection: the trainer's set-up runs the stage that
    diverse_select runs, so on the same pool, k and seed the same rows are dropped and the rows left get the same
    clusters (ids, sizes, map, representative rows). A dropped row carries its nearest centroid's id, never drawn."""
    pool = make_pool()
    exclude = arithmetic_exclude(pool)
    with single_thread():
        trainer = make_trainer(tmp_path, pool=pool, budget=24, rounds=2, exclude_dataset=exclude)
    _, manifest = diverse_select(
        pool, 40, k=trainer.k, seed=trainer.args.selection_seed, embedding_column="embedding", exclude=exclude,
        return_manifest=True,
    )
    assert manifest.decontamination["removed_indices"] == trainer.decontamination["removed_indices"] == [26, 33]
    kept = np.setdiff1d(np.arange(len(pool)), [26, 33])
    assert manifest.cluster_sizes == np.bincount(trainer.labels[kept], minlength=trainer.k).tolist()
    assert manifest.selected_clusters == trainer.labels[manifest.selected_indices].tolist()
    assert manifest.cluster_map == trainer.cluster_map
    examples = [d["example_rows"] for d in trainer.cluster_descriptions]
    assert examples == [d["example_rows"] for d in manifest.cluster_descriptions]
    assert not {26, 33} & {row for rows in examples for row in rows}  # a dropped row represents no cluster
    assert not trainer.trainable[[26, 33]].any() and 0 <= trainer.labels[[26, 33]].min() < trainer.k
