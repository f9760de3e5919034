"""A target in the iterative trainer (issue 30): `target_dataset=` sets round 1's quotas as `diverse_select` does, the
plan and manifests record it, a resume replays it, and `TargetLossScorer` scores clusters by the loss on it."""

from __future__ import annotations

import os

import datasets
import numpy as np
import pytest

from helpers import make_pool, make_trainer, read_rounds, single_thread  # noqa: F401
from hf_idsel import InvalidArgumentError, TargetLossScorer
from hf_idsel.sample import affinity_weights, cluster_quotas

TOPIC = 1  # "What is {i} plus {i}?" rows


def topic_target(rows: int = 6) -> datasets.Dataset:
    """`rows` new examples of topic 1 (sums), in the pool's layout, with vectors near that topic's."""
    pool = make_pool()
    members = np.flatnonzero(np.asarray(pool["topic"]) == TOPIC)[:rows]
    return datasets.Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": f"What is {100 + i} plus {100 + i}?"}, {"role": "assistant", "content": f"It is {200 + 2 * i}."}]
                for i in range(rows)
            ],
            "embedding": pool.select(members)["embedding"],
        }
    )


def round_one_topics(trainer) -> np.ndarray:
    topics = np.asarray(trainer.pool["topic"])
    return np.bincount(topics[trainer.selection.current_rows], minlength=4)


def test_round_one_quotas_move_toward_the_target(tmp_path):
    plain = make_trainer(tmp_path / "plain")
    aimed = make_trainer(tmp_path / "aimed", target_dataset=topic_target())
    assert round_one_topics(plain).tolist() == [4, 4, 4, 4]
    counts = round_one_topics(aimed)
    assert counts.sum() == 16 and counts[TOPIC] >= 12
    # Exactly the quotas of diverse_select's target-kmq: size x affinity ** sharpness over the clusters.
    record = aimed.target
    assert record["method"] == "kmq" and record["sharpness"] == 4.0 and record["num_rows"] == 6
    labels = aimed.labels
    quotas = cluster_quotas(np.bincount(labels, minlength=aimed.k), 16, affinity_weights(record["cluster_affinity"], 4.0))
    assert np.bincount(labels[aimed.selection.current_rows], minlength=aimed.k).tolist() == quotas.tolist()
    # Sharpness 0 ignores the target: the plain run's rows.
    flat = make_trainer(tmp_path / "flat", target_dataset=topic_target(), target_sharpness=0)
    assert flat.selection.current_rows == plain.selection.current_rows
    # The manifests and the round plan record it.
    assert aimed.selection_manifest().target == record
    assert aimed._selection_plan()["target"]["digest"] == record["digest"]
    assert "target" not in plain._selection_plan()


def test_target_settings_and_the_test_set_are_refused_before_training(tmp_path):
    target = topic_target()
    with pytest.raises(InvalidArgumentError, match="target_sharpness"):
        make_trainer(tmp_path, target_dataset=target, target_sharpness=-2)
    with pytest.raises(InvalidArgumentError, match="target_task_column"):
        make_trainer(tmp_path, target_dataset=target, target_task_column="task")
    with pytest.raises(InvalidArgumentError, match="`target_dataset` are also items of `exclude_dataset`"):
        make_trainer(tmp_path, target_dataset=target, exclude_dataset=target.select([2]).remove_columns("embedding"))


def test_a_resume_replays_the_targeted_rounds_and_refuses_another_target(tmp_path):
    full = make_trainer(tmp_path, target_dataset=topic_target(), budget=24, save_strategy="epoch")
    full.train()
    expected = full.selection.rounds
    checkpoint = os.path.join(full.args.output_dir, "checkpoint-2")
    resumed = make_trainer(tmp_path, target_dataset=topic_target(), budget=24, save_strategy="no")
    resumed.train(resume_from_checkpoint=checkpoint)
    assert [r["selected"] for r in resumed.selection.rounds] == [r["selected"] for r in expected]
    other = make_trainer(tmp_path, target_dataset=topic_target(5), budget=24, save_strategy="no")
    with pytest.raises(InvalidArgumentError, match="target"):
        other.train(resume_from_checkpoint=checkpoint)


def test_target_loss_scorer_scores_the_target_clusters_by_the_models_loss(tmp_path):
    target = topic_target()
    trainer = make_trainer(tmp_path, target_dataset=target, scorer=TargetLossScorer(target), budget=24)
    trainer.train()
    rounds = read_rounds(trainer.args.output_dir)
    nearest = set(trainer.target["example_clusters"])
    for record in rounds[:-1]:  # the last round is not scored by default
        scored = {j for j, s in enumerate(record["cluster_scores"]) if s is not None}
        assert scored == nearest
        # The score is the mean loss of the examples nearest that cluster under the trained model.
        assert all(0 < record["cluster_scores"][j] < 20 for j in scored)
    assert trainer.scorer_name == "target_loss"
    # The model card says what the run was aimed at.
    from hf_idsel.cards import model_card

    card = str(model_card(trainer._model_card_facts(), trainer.args.output_dir))
    assert "| selected for a target | aimed at 6 examples" in card and "cluster quotas" in card
    # Its losses are the model's: the same examples scored directly agree.
    scorer = TargetLossScorer(target).bind(trainer.model, trainer.processing_class)
    pairs = scorer.pairs(trainer.processing_class)
    direct = scorer([p for p, _ in pairs], [a for _, a in pairs], None)
    cluster = sorted(nearest)[0]
    members = np.asarray(trainer.target["example_clusters"]) == cluster
    assert np.isfinite(direct).all() and direct[members].mean() > 0


def test_target_loss_scorer_needs_the_runs_target(tmp_path):
    target = topic_target()
    with pytest.raises(InvalidArgumentError, match="give the trainer the same examples"):
        make_trainer(tmp_path, scorer=TargetLossScorer(target), budget=24).train()
    with pytest.raises(InvalidArgumentError, match="no answer"):
        make_trainer(tmp_path, target_dataset=target, scorer=TargetLossScorer(["just a prompt"]), budget=24)
