"""Round logic of iterative kMQ without a Trainer: sizes, draws, scores, weights, records, state."""

import json

import numpy as np
import pytest

from hf_idsel.errors import InvalidArgumentError
from hf_idsel.rounds import (
    RoundRecord,
    SelectionState,
    close_round,
    cluster_scores,
    draw_round,
    labels_digest,
    round_metrics,
    round_sizes,
    sample_rows_per_cluster,
    update_weights,
    write_round_file,
)
from hf_idsel.sample import kmq_sample


def test_round_sizes_are_exact():
    assert round_sizes(10, 3) == [4, 3, 3]
    assert round_sizes(9, 3) == [3, 3, 3]
    assert round_sizes(1, 1) == [1]
    assert sum(round_sizes(1001, 7)) == 1001
    with pytest.raises(InvalidArgumentError, match="`rounds`=4 is larger than the budget"):
        round_sizes(3, 4)
    with pytest.raises(InvalidArgumentError, match="`rounds`=0"):
        round_sizes(3, 0)


def _labels():
    return np.repeat(np.arange(4), [40, 30, 20, 10])


def test_draw_round_is_kmq_seeded_per_round_and_skips_selected_rows():
    labels = _labels()
    trainable = np.ones(len(labels), dtype=bool)
    trainable[:5] = False  # dropped by tokenization
    state = SelectionState.start(labels, 4)
    first = draw_round(state, labels, 20, round_index=1, trainable=trainable, selection_seed=7)
    # Round 1 is plain kMQ with the round's seed: the rows runs made before this module drew.
    expected = kmq_sample(labels, 20, k=4, seed=7 * 1_000_003 + 1, eligible=trainable)
    np.testing.assert_array_equal(first, expected)
    assert len(first) == 20 and trainable[first].all()
    np.testing.assert_array_equal(first, draw_round(state, labels, 20, round_index=1, trainable=trainable, selection_seed=7))
    state.current_rows = first.tolist()
    close_round(state, labels, trainable, np.zeros(0, np.int64), np.zeros(0), rule="paper", temperature=1.0,
                scorer="loss", scored=False, global_step=5, k_selection=None)
    second = draw_round(state, labels, 20, round_index=2, trainable=trainable, selection_seed=7)
    assert len(second) == 20 and not set(second.tolist()) & set(first.tolist())
    assert trainable[second].all()


def test_close_round_moves_weight_to_the_clusters_that_score_high_and_records_one_shape(tmp_path):
    labels = _labels()
    trainable = np.ones(len(labels), dtype=bool)
    state = SelectionState.start(labels, 4)
    state.current_rows = draw_round(state, labels, 20, round_index=1, trainable=trainable, selection_seed=0).tolist()
    rows = np.asarray(sorted(state.current_rows))
    scores = np.where(labels[rows] == 2, 3.0, 0.0)  # cluster 2 is the one still worth learning
    record = close_round(state, labels, trainable, rows, scores, rule="paper", temperature=1.0, scorer="loss",
                         scored=True, global_step=3, k_selection={"method": "given"})
    assert np.argmax(record.weights) == 2 and sum(record.weights) == pytest.approx(1.0)
    assert record.cumulative_size == 20 and record.scored_rows == 20 and record.round == 1
    assert sum(record.selected_per_cluster) == 20 and record.cluster_scores[2] == 3.0
    assert state.rounds == [record.to_dict()] and state.weights == record.weights and state.current_rows == []
    # Round files have exactly the record's fields, whoever writes them.
    path = write_round_file(str(tmp_path), record.to_dict())
    assert RoundRecord.from_dict(json.load(open(path))) == record
    assert list(json.load(open(path))) == [
        "round", "weights", "cluster_scores", "selected", "selected_per_cluster", "cumulative_size", "scorer",
        "scored", "scored_rows", "global_step", "k", "k_selection",
    ]
    with pytest.raises(InvalidArgumentError, match="missing fields"):
        write_round_file(str(tmp_path), {"round": 1, "weights": [1.0]})
    metrics = round_metrics(record, scores)
    assert metrics["selection/rows_selected"] == 20.0 and metrics["selection/score_mean"] == pytest.approx(scores.mean())


def test_three_rounds_in_numpy_spend_the_budget_exactly_and_follow_the_scores():
    labels = _labels()
    trainable = np.ones(len(labels), dtype=bool)
    state = SelectionState.start(labels, 4)
    drawn = []
    for r, size in enumerate(round_sizes(48, 3), start=1):
        state.current_rows = draw_round(state, labels, size, round_index=r, trainable=trainable, selection_seed=1).tolist()
        state.current_round = r
        drawn.append(list(state.current_rows))
        rows = np.asarray(sorted(state.current_rows))
        close_round(state, labels, trainable, rows, (labels[rows] == 0).astype(float) * 2.0, rule="paper",
                    temperature=1.0, scorer="loss", scored=True, global_step=r, k_selection=None)
    chosen = [row for rows in drawn for row in rows]
    assert len(chosen) == len(set(chosen)) == 48
    per_round = [np.bincount(labels[rows], minlength=4) for rows in drawn]
    assert per_round[2][0] > per_round[0][0]  # the high-scoring cluster gets more of later rounds
    assert state.selected() == chosen


def test_an_exhausted_cluster_drops_to_zero_weight():
    labels = np.array([0, 0, 1, 1, 1, 1])
    state = SelectionState.start(labels, 2)
    trainable = np.ones(6, dtype=bool)
    state.current_rows = [0, 1, 2]
    record = close_round(state, labels, trainable, np.array([0, 1, 2]), np.array([5.0, 5.0, 0.0]), rule="paper",
                         temperature=1.0, scorer="loss", scored=True, global_step=1, k_selection=None)
    assert record.weights == [0.0, 1.0]


def test_selection_state_reads_checkpoints_written_before_and_refuses_strangers():
    labels = _labels()
    # A checkpoint's state as the trainer wrote it before the round logic had its own module.
    old = {
        "k": 4, "weights": [0.25] * 4, "rounds": [], "current_round": 1, "current_rows": [3, 50],
        "labels_digest": labels_digest(labels), "pending_losses": [[3, 1.5]], "epochs_done": 0,
    }
    state = SelectionState.from_json(json.dumps(old), where="checkpoint-4/hf_idsel_selection.json")
    assert state.selected() == [3, 50] and state.labels_digest == labels_digest(labels)
    # Written back, it carries every field of the current format; pool_digest stays "" (not recorded then).
    assert json.loads(state.to_json()) == {**old, "pool_digest": ""}
    with pytest.raises(InvalidArgumentError, match="not a selection state"):
        SelectionState.from_json(json.dumps({**old, "run_code": "x"}), where="bad.json")
    with pytest.raises(InvalidArgumentError, match="not a selection state"):
        SelectionState.from_json("[1, 2]", where="bad.json")
    assert labels_digest(labels) != labels_digest(labels[::-1])




def test_sample_rows_per_cluster():
    labels = np.repeat(np.arange(5), [20, 10, 4, 6, 8])
    rng = np.random.default_rng(3)
    rows = np.sort(rng.choice(len(labels), size=30, replace=False))
    rows = rows[labels[rows] != 4]  # cluster 4 has no candidate at all
    chosen = sample_rows_per_cluster(labels, rows, 3, seed=0)
    assert chosen.dtype == np.int64
    assert (np.diff(chosen) > 0).all()
    assert set(chosen.tolist()) <= set(rows.tolist())
    available = np.bincount(labels[rows], minlength=5)
    np.testing.assert_array_equal(np.bincount(labels[chosen], minlength=5), np.minimum(available, 3))
    # Deterministic per seed, whatever the candidates' order; another seed draws other rows.
    np.testing.assert_array_equal(chosen, sample_rows_per_cluster(labels, rows[::-1].copy(), 3, seed=0))
    others = [sample_rows_per_cluster(labels, rows, 3, seed=s) for s in range(1, 6)]
    assert any(not np.array_equal(chosen, o) for o in others)
    # per_cluster <= 0 keeps every candidate.
    np.testing.assert_array_equal(sample_rows_per_cluster(labels, rows[::-1].copy(), 0, seed=0), rows)
    np.testing.assert_array_equal(sample_rows_per_cluster(labels, rows, 100, seed=0), rows)
    assert sample_rows_per_cluster(labels, np.array([], dtype=np.int64), 3, seed=0).size == 0


def test_sample_rows_per_cluster_validates():
    labels = np.array([0, 0, 1, 1])
    with pytest.raises(InvalidArgumentError, match="duplicate"):
        sample_rows_per_cluster(labels, np.array([0, 0, 1]), 1, seed=0)
    with pytest.raises(InvalidArgumentError, match="row ids"):
        sample_rows_per_cluster(labels, np.array([0, 4]), 1, seed=0)
    with pytest.raises(InvalidArgumentError, match="per_cluster"):
        sample_rows_per_cluster(labels, np.array([0, 1]), 1.5, seed=0)


def test_cluster_scores():
    labels = np.array([0, 0, 1, 1, 2, 3, 3, 0])
    rows = np.array([0, 7, 2, 5, 6])
    scores = np.array([1.0, 2.0, -4.0, 0.5, 1.5])
    means = cluster_scores(labels, rows, scores, k=5)
    assert means.dtype == np.float64 and means.shape == (5,)
    np.testing.assert_array_equal(means[[0, 1, 3]], [1.5, -4.0, 1.0])
    assert np.isnan(means[2]) and np.isnan(means[4])
    assert np.isnan(cluster_scores(labels, np.array([], dtype=np.int64), np.array([]), k=2)).all()
    with pytest.raises(InvalidArgumentError, match="scores"):
        cluster_scores(labels, rows, scores[:3], k=5)
    with pytest.raises(InvalidArgumentError, match="NaN"):
        cluster_scores(labels, rows, np.array([1.0, np.nan, 0, 0, 0]), k=5)
    with pytest.raises(InvalidArgumentError, match=r"\[0, 3\)"):
        cluster_scores(labels, rows, scores, k=3)




def test_paper_weight_rule_moves_weight_toward_high_scores_and_remembers():
    w = update_weights(np.full(4, 0.25), np.array([1.0, 0.0, np.nan, -1.0]))
    assert w.sum() == pytest.approx(1) and w[0] > w[1] > w[3]
    # An unscored cluster is treated as average: it stays between the best and the worst.
    assert w[0] > w[2] > w[3]
    # Equal scores keep the previous weights (the paper multiplies by them)...
    old = np.array([0.7, 0.1, 0.1, 0.1])
    assert np.allclose(update_weights(old, np.zeros(4)), old)
    # ...while the research code's rule forgets them.
    assert np.allclose(update_weights(old, np.zeros(4), rule="research"), 0.25)
    # A lower temperature sharpens the update; exhausted clusters get nothing.
    sharp = update_weights(np.full(4, 0.25), np.array([1.0, 0.0, 0.0, 0.0]), temperature=0.1)
    soft = update_weights(np.full(4, 0.25), np.array([1.0, 0.0, 0.0, 0.0]), temperature=10.0)
    assert sharp[0] > soft[0] > 0.25
    assert update_weights(np.full(4, 0.25), np.zeros(4), available=np.array([5, 0, 5, 5]))[1] == 0
