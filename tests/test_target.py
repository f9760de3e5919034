"""Selecting for a target (issue 30): RDS+ round-robin, affinity-weighted kMQ quotas, the target/exclude check, the
manifest's target record, replay, token budgets, report and card."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_idsel import diverse_select, load_selection
from hf_idsel.cards import card_facts, dataset_card
from hf_idsel.errors import InvalidArgumentError, SelectionMismatchError
from hf_idsel.manifest import Manifest
from hf_idsel.report import format_report
from hf_idsel.sample import affinity_weights, cluster_quotas, kmq_sample
from hf_idsel.target import affinity_split, cluster_affinity, rds_order


def select(pool, budget, **kwargs):
    kwargs.setdefault("embedding_column", "embedding")
    kwargs.setdefault("k", 6)
    return diverse_select(pool, budget, **kwargs)


def blob_target(blob_pool, blob: int, rows: int = 4) -> datasets.Dataset:
    """`rows` examples lying in planted blob `blob` (new texts, the blob's direction as their vectors)."""
    members = np.flatnonzero(np.asarray(blob_pool["blob"]) == blob)
    vectors = np.asarray(blob_pool.select(members[:rows])["embedding"])
    return datasets.Dataset.from_dict(
        {"text": [f"an example of the task of blob {blob}, number {i}" for i in range(rows)], "embedding": vectors.tolist()}
    )


# ---- RDS+ round-robin, by hand ----


def test_rds_round_robin_on_a_hand_built_case():
    """Examples take turns in order, each taking its most similar row not taken yet; ties go to the lower row."""
    angles = np.deg2rad([0, 10, 20, 80, 90, 100, 45])
    pool = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    x_axis, y_axis = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    targets = np.concatenate([x_axis, y_axis])
    # x: rows 0 (0 deg), 1, 2, 6, ...; y: row 4 (90 deg), then 3 and 5 tie at 10 deg (lower row first), 6, ...
    assert rds_order(pool, targets, 7).tolist() == [0, 4, 1, 3, 2, 5, 6]
    # A row an earlier turn took is skipped: the example takes its next best.
    both_x = np.concatenate([x_axis, x_axis])
    assert rds_order(pool, both_x, 4).tolist() == [0, 1, 2, 6]
    # Ineligible rows are never taken; the turns go on over what is left.
    eligible = np.ones(7, dtype=bool)
    eligible[[0, 4]] = False
    assert rds_order(pool, targets, 4, eligible=eligible).tolist() == [1, 3, 2, 5]
    with pytest.raises(InvalidArgumentError, match="only 5 are eligible"):
        rds_order(pool, targets, 6, eligible=eligible)


def test_rds_round_robin_over_tasks_gives_each_task_an_equal_share():
    """With a task column the tasks take turns: task "x" (three examples on the x axis) and task "y" (one) each get
    every other row, however many examples each has."""
    angles = np.deg2rad([0, 5, 10, 15, 20, 90, 85, 80, 75, 70])
    pool = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    targets = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    tasks = np.array(["x", "x", "x", "y"], dtype=object)
    order = rds_order(pool, targets, 8, tasks=tasks)
    assert order.tolist() == [0, 5, 1, 6, 2, 7, 3, 8]
    # Without tasks, the three x examples take three turns out of four.
    assert rds_order(pool, targets, 4).tolist() == [0, 1, 2, 5]
    # Tiny blocks (the memory bound) give the same order.
    assert rds_order(pool, targets, 8, tasks=tasks, pairs_per_block=1).tolist() == order.tolist()


def test_target_rds_through_diverse_select_takes_the_target_rows_first(blob_pool):
    target = blob_target(blob_pool, blob=4)  # a blob of 20 rows
    subset = select(blob_pool, 20, target_dataset=target, target_method="rds")
    assert len(subset) == 20
    assert set(subset["blob"]) == {4}


# ---- affinity quotas ----


def test_affinity_quotas_concentrate_the_budget_and_keep_it_exact(blob_pool):
    target = blob_target(blob_pool, blob=1)  # 60 of 250 rows
    plain = select(blob_pool, 40, seed=3)
    aimed, manifest = select(blob_pool, 40, seed=3, target_dataset=target, return_manifest=True)
    assert len(aimed) == 40 == sum(manifest.selected_per_cluster)
    share = lambda subset: np.mean(np.asarray(subset["blob"]) == 1)  # noqa: E731
    assert share(aimed) > 0.6 > share(plain)
    # A lower sharpness spreads the budget wider, still leaning to the target.
    mild = select(blob_pool, 40, seed=3, target_dataset=target, target_sharpness=1)
    assert len(set(mild["blob"])) > 1 and share(plain) < share(mild) < share(aimed)
    # Sharpness 0 is plain kMQ: the same rows.
    flat = select(blob_pool, 40, seed=3, target_dataset=target, target_sharpness=0)
    assert flat["source_index"] == plain["source_index"]
    # The quotas follow size x affinity ** sharpness, exactly.
    affinity = np.asarray(manifest.target["cluster_affinity"])
    expected = cluster_quotas(np.asarray(manifest.cluster_sizes), 40, affinity_weights(affinity, 4.0))
    assert manifest.selected_per_cluster == expected.tolist()


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=12),
    affinity=st.lists(st.floats(0, 1), min_size=12, max_size=12),
    sharpness=st.floats(0, 8),
    data=st.data(),
)
def test_affinity_quotas_sum_to_the_budget_and_fit_the_clusters(sizes, affinity, sharpness, data):
    available = np.asarray(sizes)
    weights = affinity_weights(np.asarray(affinity[: len(sizes)]), sharpness)
    total = data.draw(st.integers(0, int(available.sum())))
    quotas = cluster_quotas(available, total, weights)
    assert quotas.sum() == total
    assert (quotas >= 0).all() and (quotas <= available).all()
    labels = np.repeat(np.arange(len(sizes)), sizes)
    drawn = kmq_sample(labels, total, k=len(sizes), seed=0, weights=weights)
    assert len(drawn) == len(set(drawn.tolist())) == total
    assert np.bincount(labels[drawn], minlength=len(sizes)).tolist() == quotas.tolist()


def test_cluster_affinity_is_the_clipped_mean_cosine_and_tasks_pull_equally():
    centroids = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    targets = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert cluster_affinity(centroids, targets).tolist() == pytest.approx([0.75, 0.25, 0.0])
    tasks = np.array(["a", "a", "a", "b"], dtype=object)
    assert cluster_affinity(centroids, targets, tasks).tolist() == pytest.approx([0.5, 0.5, 0.0])


# ---- bad input ----


def test_a_target_item_that_is_an_exclude_item_is_refused_before_embedding(monkeypatch):
    pool = datasets.Dataset.from_dict({"question": [f"What is {i} plus {i}?" for i in range(30)], "answer": ["x"] * 30})
    evaluation = datasets.Dataset.from_dict({"question": ["What is 2 + 2?", "Name a colour."], "answer": ["4", "red"]})
    target = datasets.Dataset.from_dict({"question": ["What is 3 + 3?", "name a colour"], "answer": ["6", "Red!"]})

    def no_embedding(*args, **kwargs):
        raise AssertionError("the target must be refused before anything is embedded")

    monkeypatch.setattr("hf_idsel.pipeline.embed_dataset", no_embedding)
    with pytest.raises(InvalidArgumentError, match=r"1 item\(s\) of `target_dataset` are also items of `exclude_dataset`.*target row 1"):
        diverse_select(pool, 5, target_dataset=target, exclude_dataset=evaluation)


def test_bad_target_settings_name_the_argument(blob_pool):
    target = blob_target(blob_pool, blob=0)
    for kwargs, name in [
        ({"target_dataset": []}, "target_dataset"),
        ({"target_dataset": 3}, "target_dataset"),
        ({"target_dataset": target, "target_method": "nearest"}, "target_method"),
        ({"target_dataset": target, "target_sharpness": -1}, "target_sharpness"),
        ({"target_dataset": target, "target_task_column": "task"}, "target_task_column"),
        ({"target_dataset": target, "method": "random"}, "target_dataset"),
        ({"target_dataset": target, "target_method": "rds", "quality_column": "quality"}, "quality_column"),
        ({"target_dataset": target.remove_columns("embedding")}, "embedding_column"),
    ]:
        with pytest.raises(InvalidArgumentError, match=name):
            select(blob_pool, 10, **kwargs)


# ---- token budgets ----


def test_token_budgets_with_a_target_are_exact(blob_pool):
    from transformers import AutoTokenizer

    from hf_idsel.embed import encoder_identity

    tokenizer = AutoTokenizer.from_pretrained(encoder_identity("sentence-transformers/all-MiniLM-L6-v2").location)
    lengths = np.array([len(tokenizer(t)["input_ids"]) for t in blob_pool["text"]])
    target = blob_target(blob_pool, blob=2)
    for method in ("kmq", "rds"):
        subset, manifest = select(
            blob_pool, None, max_tokens=300, tokenizer=tokenizer, target_dataset=target, target_method=method,
            return_manifest=True,
        )
        used = lengths[subset["source_index"]].sum()
        assert used == manifest.budget["tokens"] <= 300
        assert used + lengths.max() > 300  # filled: the next row in the order would not fit
        assert np.mean(np.asarray(subset["blob"]) == 2) > 0.5


# ---- manifest, replay, report, card ----


@pytest.fixture
def targeted(blob_pool):
    target = blob_target(blob_pool, blob=3)
    subset, manifest = select(blob_pool, 30, seed=1, target=target, return_manifest=True)
    return target, subset, manifest


def test_the_manifest_records_the_target_and_is_verified_on_load(targeted, tmp_path):
    target, _, manifest = targeted
    record = manifest.target
    assert record["num_rows"] == 4 and record["method"] == "kmq" and record["sharpness"] == 4.0
    assert record["digest"].startswith("sha256:") and len(record["cluster_affinity"]) == manifest.k
    assert manifest.arguments["target_method"] == "kmq"
    path = tmp_path / "manifest.json"
    manifest.save(str(path))
    assert Manifest.load(str(path)).target == record
    for field, value in [("cluster_affinity", [0.5] * (manifest.k - 1)), ("method", "nearest"), ("sharpness", -1),
                         ("num_rows", 0), ("digest", "md5:00"), ("tasks", {"a": 1})]:
        data = json.loads(path.read_text())
        data["target"][field] = value
        with pytest.raises(InvalidArgumentError, match="not a valid hf_idsel manifest: `target"):
            Manifest.from_dict(data)


def test_replay_from_the_manifest_needs_the_same_target(targeted, blob_pool):
    target, subset, manifest = targeted
    again = load_selection(manifest, blob_pool, recompute=True, target_dataset=target)
    assert again["source_index"] == subset["source_index"]
    assert load_selection(manifest, blob_pool, recompute=True, target=target)["source_index"] == subset["source_index"]
    with pytest.raises(InvalidArgumentError, match="pass those examples again as `target_dataset=`"):
        load_selection(manifest, blob_pool, recompute=True)
    with pytest.raises(SelectionMismatchError, match="differs from the target"):
        load_selection(manifest, blob_pool, recompute=True, target_dataset=target.select([1, 0, 2, 3]))
    # Without recompute the recorded rows load as they are.
    assert load_selection(manifest, blob_pool)["source_index"] == subset["source_index"]
    plain = select(blob_pool, 30, seed=1, return_manifest=True)[1]
    with pytest.raises(InvalidArgumentError, match="was not aimed at a target"):
        load_selection(plain, blob_pool, recompute=True, target_dataset=target)


def test_report_and_dataset_card_say_what_the_selection_was_aimed_at(targeted):
    _, subset, manifest = targeted
    report = format_report(manifest)
    assert "target: aimed at 4 examples" in report and "target_method='kmq'" in report
    split = affinity_split(manifest.target["cluster_affinity"], manifest.cluster_sizes, manifest.selected_per_cluster)
    assert sum(band["selected_rows"] for band in split) == len(subset)
    assert sum(band["pool_rows"] for band in split) == sum(manifest.cluster_sizes)
    first = split[0]
    assert f"band 1 (affinity {first['affinity'][0]:.2f}-{first['affinity'][1]:.2f}" in report
    assert first["selected_rows"] / len(subset) > first["pool_rows"] / sum(manifest.cluster_sizes)
    card = str(dataset_card(manifest, card_facts("me/picked", None), configs=["default"]))
    assert "### Target" in card and "aimed at 4 examples" in card
    assert f"| 1 | {first['affinity'][0]:.2f}-{first['affinity'][1]:.2f} |" in card


# ---- the command line ----


def test_select_target_flag_loads_the_target_like_the_pool(blob_pool, tmp_path, capsys):
    from hf_idsel.cli import main

    pool, target = tmp_path / "pool.jsonl", tmp_path / "target.jsonl"
    blob_pool.to_json(str(pool))
    blob_target(blob_pool, blob=3).to_json(str(target))
    out = tmp_path / "out"
    argv = ["select", str(pool), "--embedding_column", "embedding", "--k", "6", "--budget", "20", "--out", str(out)]
    assert main([*argv, "--target", str(target)]) == 0
    assert "target: aimed at 4 examples (target.jsonl); target_method='kmq'" in capsys.readouterr().out
    manifest = Manifest.load(str(out / "manifest.json"))
    assert manifest.target["name"] == "target.jsonl" and manifest.target["source"]["path"] == str(target)
    assert np.mean(np.asarray(datasets.Dataset.from_parquet(str(out / "subset.parquet"))["blob"]) == 3) > 0.5
    # The long name with hyphens, and RDS+.
    assert main([*argv, "--overwrite", "--target-dataset", str(target), "--target_method", "rds"]) == 0
    assert Manifest.load(str(out / "manifest.json")).target["method"] == "rds"
    # A target that is not there is named by its flag.
    assert main([*argv[:-1], str(tmp_path / "t" / "out"), "--target", str(tmp_path / "t")]) != 0
    assert "--target_dataset" in capsys.readouterr().err
