"""Round logic of iterative kMQ without a Trainer: sizes, draws, scores, weights, records, state."""

import dataclasses
import json
import os
import re
import sys
import warnings

import numpy as np
import pytest

from helpers import assert_warned_at
from hf_idsel.checkpoint import STATE_FILE, check_plan, read_state, state_digest, write_state
from hf_idsel.errors import InvalidArgumentError
from hf_idsel.rounds import (
    RoundRecord,
    SelectionState,
    canonical_quota,
    close_round,
    cluster_scores,
    draw_round,
    labels_digest,
    merge_scores,
    read_round_file,
    round_metrics,
    round_records,
    round_summary,
    round_sizes,
    sample_rows_per_cluster,
    selection_manifest,
    target_prior,
    update_weights,
    weight_entropy,
    write_round_file,
)
from hf_idsel.manifest import indices_digest
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
    close_round(state, labels, trainable, np.zeros(0, np.int64), np.zeros(0), rule="softmax", temperature=1.0,
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
    record = close_round(state, labels, trainable, rows, scores, rule="softmax", temperature=1.0, scorer="loss",
                         scored=True, global_step=3, k_selection={"method": "given"})
    assert np.argmax(record.weights) == 2 and sum(record.weights) == pytest.approx(1.0)
    assert record.cumulative_size == 20 and record.scored_rows == 20 and record.round == 1
    assert sum(record.selected_per_cluster) == 20 and record.cluster_scores[2] == 3.0
    assert state.rounds == [record.to_dict()] and state.weights == record.weights and state.current_rows == []
    # Round files have exactly the record's fields, whoever writes them.
    path = write_round_file(str(tmp_path), record.to_dict())
    assert RoundRecord.from_dict(json.load(open(path))) == record and record.weight_update == "softmax"
    assert list(json.load(open(path))) == [
        "round", "weights", "cluster_scores", "selected", "selected_per_cluster", "cumulative_size", "scorer",
        "scored", "scored_rows", "global_step", "k", "k_selection", "cluster_terms", "weight_update", "eval",
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
        close_round(state, labels, trainable, rows, (labels[rows] == 0).astype(float) * 2.0, rule="softmax",
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
    record = close_round(state, labels, trainable, np.array([0, 1, 2]), np.array([5.0, 5.0, 0.0]), rule="softmax",
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
    assert json.loads(state.to_json()) == {**old, "pool_digest": "", "epoch_end_steps": []}
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
    assert np.allclose(update_weights(old, np.zeros(4), rule="softmax_replace"), 0.25)
    # A lower temperature sharpens the update; exhausted clusters get nothing.
    sharp = update_weights(np.full(4, 0.25), np.array([1.0, 0.0, 0.0, 0.0]), temperature=0.1)
    soft = update_weights(np.full(4, 0.25), np.array([1.0, 0.0, 0.0, 0.0]), temperature=10.0)
    assert sharp[0] > soft[0] > 0.25
    assert update_weights(np.full(4, 0.25), np.zeros(4), available=np.array([5, 0, 5, 5]))[1] == 0


# ------------------------------------------------------------------------------------------------
# Added with the mutation run (scripts/mutation_test.py, docs/testing.md): each test below kills
# mutants of rounds.py that the tests above let through.
# ------------------------------------------------------------------------------------------------


def _exactly(message):
    """A `match=` pattern for exactly this error message."""
    return "^" + re.escape(message) + "$"


def test_round_errors_name_the_argument():
    labels = np.array([0, 0, 1, 1])
    for k in (0, True, 2.0):
        with pytest.raises(InvalidArgumentError, match=_exactly(f"`k` must be an int >= 1, got {k!r}.")):
            cluster_scores(labels, np.array([0]), np.array([1.0]), k=k)
    with pytest.raises(InvalidArgumentError, match=_exactly(
        "`labels` must be a 1-D integer array, got dtype float64 and shape (4,)."
    )):
        cluster_scores(labels.astype(float), np.array([0]), np.array([1.0]), k=2)
    with pytest.raises(InvalidArgumentError, match=_exactly(
        "`rows` must be a 1-D integer array, got dtype float64 and shape (2,)."
    )):
        sample_rows_per_cluster(labels, np.array([0.0, 1.0]), 1, seed=0)
    for scores in (np.array([1.0, np.inf]), [1.0, None]):  # None: a row whose score is missing
        with pytest.raises(InvalidArgumentError, match=_exactly("`scores` holds NaN or inf values.")):
            cluster_scores(labels, np.array([0, 2]), scores, k=2)
    # A duplicate anywhere, not only of the smallest row id.
    with pytest.raises(InvalidArgumentError, match=_exactly("`rows` holds duplicate row ids.")):
        sample_rows_per_cluster(labels, np.array([3, 0, 2, 2]), 1, seed=0)
    with pytest.raises(InvalidArgumentError, match=_exactly(
        "`weight_update`='bogus'; choose one of ['softmax', 'linear', 'softmax_replace']."
    )):
        update_weights(np.full(2, 0.5), np.zeros(2), rule="bogus")


def test_one_cluster_and_one_row_per_cluster_are_valid():
    labels = np.array([0, 0, 0])
    np.testing.assert_array_equal(cluster_scores(labels, np.array([0, 2]), np.array([1.0, 2.0]), k=1), [1.5])
    labels = np.repeat(np.arange(3), 4)
    chosen = sample_rows_per_cluster(labels, np.arange(12), 1, seed=0)
    assert np.bincount(labels[chosen], minlength=3).tolist() == [1, 1, 1]


def test_cluster_scores_of_unscored_clusters_warn_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        means = cluster_scores(np.array([0, 1, 2]), np.array([0]), np.array([2.0]), k=3)
    assert means[0] == 2.0 and np.isnan(means[1:]).all()


def test_paper_weight_rule_is_softmax_times_the_old_weight():
    # Algorithm 1: w <- softmax(s / T) * w, renormalised; T defaults to 1.
    np.testing.assert_allclose(update_weights(np.array([0.5, 0.5]), np.array([np.log(3.0), 0.0])), [0.75, 0.25])
    np.testing.assert_allclose(update_weights(np.array([0.2, 0.8]), np.array([np.log(3.0), 0.0])), [3 / 7, 4 / 7])
    np.testing.assert_allclose(
        update_weights(np.array([0.5, 0.5]), np.array([np.log(3.0), 0.0]), temperature=0.5), [0.9, 0.1]
    )
    # Weights need not be normalised (e.g. counts); only their ratios count.
    np.testing.assert_allclose(update_weights([1, 3], np.zeros(2)), [0.25, 0.75])
    # Scores of any size (perplexities in the thousands) give finite weights, the same as shifted scores.
    big = update_weights(np.full(3, 1 / 3), np.array([1000.0, 999.0, 998.0]))
    np.testing.assert_allclose(big, update_weights(np.full(3, 1 / 3), np.array([2.0, 1.0, 0.0])))


def test_unscored_clusters_keep_their_weight_under_both_rules():
    old = np.array([0.1, 0.2, 0.3, 0.4])
    # Equal scores among the scored clusters: nothing moves, the unscored cluster included.
    np.testing.assert_allclose(update_weights(old, np.array([2.0, 2.0, np.nan, 2.0])), old)
    # The research rule splits the scored clusters' total by softmax and leaves the unscored one alone.
    flat = np.full(4, 0.25)
    np.testing.assert_allclose(update_weights(flat, np.array([1.0, 1.0, np.nan, 1.0]), rule="softmax_replace"), flat)
    np.testing.assert_allclose(
        update_weights(flat, np.array([np.log(3.0), 0.0, np.nan, 0.0]), rule="softmax_replace"), [0.45, 0.15, 0.25, 0.15]
    )
    # Scores as round records store them: None is a cluster without a scored row.
    np.testing.assert_allclose(update_weights(np.array([0.5, 0.5]), [None, 1.0]), [0.5, 0.5])


def test_weights_follow_the_rows_left():
    flat = np.full(4, 0.25)
    # A cluster with one row left keeps its weight; an exhausted one drops to 0.
    np.testing.assert_allclose(update_weights(flat, np.zeros(4), available=np.array([5, 1, 5, 5])), flat)
    # Every weighted cluster exhausted: the clusters with rows left share evenly (quotas then follow their sizes).
    only_first = np.array([1.0, 0.0, 0.0])
    np.testing.assert_allclose(update_weights(only_first, np.full(3, np.nan), available=np.array([0, 3, 2])), [0, 0.5, 0.5])
    np.testing.assert_allclose(update_weights(only_first, np.full(3, np.nan), available=np.array([0, 1, 2])), [0, 0.5, 0.5])
    # No weight anywhere and no availability given: uniform.
    np.testing.assert_allclose(update_weights(np.zeros(2), np.full(2, np.nan)), [0.5, 0.5])


def test_weight_entropy():
    assert weight_entropy([0.25] * 4) == pytest.approx(np.log(4))
    assert weight_entropy([0.5, 0.5, 0.0]) == pytest.approx(np.log(2))  # an exhausted cluster adds nothing
    assert weight_entropy([1.0, 0.0]) == 0.0


def test_round_metrics_names_and_values():
    record = RoundRecord(round=2, weights=[0.25] * 4, cluster_scores=[1.0, None, 2.0, 3.0], selected=[4, 1, 9],
                         selected_per_cluster=[1, 1, 1, 0], cumulative_size=7, scorer="loss", scored=True,
                         scored_rows=3, global_step=10, k=4)
    metrics = round_metrics(record, np.array([1.0, 2.0, 3.0]))
    assert metrics == pytest.approx({
        "selection/round": 2.0,
        "selection/weight_entropy": np.log(4),
        "selection/score_mean": 2.0,
        "selection/score_std": np.sqrt(2 / 3),
        "selection/rows_selected": 3.0,
        "selection/cumulative_size": 7.0,
    })
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a round without scores logs NaN, without numpy's empty-slice warnings
        empty = round_metrics(record, np.zeros(0))
    assert np.isnan(empty["selection/score_mean"]) and np.isnan(empty["selection/score_std"])


def test_round_file_lands_in_the_folder_under_its_round_number(tmp_path):
    record = RoundRecord(round=3, weights=[1.0], cluster_scores=[None], selected=[0], selected_per_cluster=[1],
                         cumulative_size=5, scorer="loss", scored=False, scored_rows=0, global_step=9, k=1)
    path = write_round_file(str(tmp_path / "rounds"), record)
    assert path == str(tmp_path / "rounds" / "round_3.json")
    assert RoundRecord.from_dict(json.load(open(path))) == record


def test_round_records_read_old_files_and_refuse_incomplete_ones():
    record = RoundRecord(round=1, weights=[1.0], cluster_scores=[2.0], selected=[0], selected_per_cluster=[1],
                         cumulative_size=1, scorer="loss", scored=True, scored_rows=1, global_step=1, k=1).to_dict()
    del record["k_selection"], record["cluster_terms"], record["weight_update"], record["eval"]  # written before these existed
    old = RoundRecord.from_dict(record)
    assert (old.k_selection, old.cluster_terms, old.weight_update, old.eval) == (None, None, None, None)
    del record["k"]
    with pytest.raises(InvalidArgumentError, match=re.escape("missing fields ['k']")):
        RoundRecord.from_dict(record)


def test_a_round_file_reads_back_typed_and_writes_the_same_bytes(tmp_path):
    record = RoundRecord(round=2, weights=[0.75, 0.25], cluster_scores=[1.5, None], selected=[4, 9], selected_per_cluster=[1, 1],
                         cumulative_size=4, scorer="loss", scored=True, scored_rows=2, global_step=6, k=2,
                         cluster_terms=["a, b", "c"], weight_update="softmax", eval={"metrics": {"mmlu/accuracy": 0.5}, "items": {"mmlu": [1]}})
    path = write_round_file(str(tmp_path / "a"), record)
    read = read_round_file(path)
    assert read == record and isinstance(read, RoundRecord)
    again = write_round_file(str(tmp_path / "b"), read)
    assert open(again, "rb").read() == open(path, "rb").read()
    assert round_records([record.to_dict(), record]) == [record, record]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"round": 0}, "`round`=0 is not an integer >= 1"),
        ({"round": True}, "`round`=True is not an integer >= 1"),
        ({"weights": [1.0]}, "`weights` is not a list of 2 values"),
        ({"weights": [0.5, "0.5"]}, "`weights` is not a list of 2 values"),
        ({"selected": [1, -2]}, "`selected` is not a list of pool rows"),
        ({"selected_per_cluster": [1.0, 1]}, "`selected_per_cluster` is not a list of 2 values"),
        ({"scored": 1}, "`scored`=1 is not true or false"),
        ({"k": "2"}, "`k`='2' is not a positive integer"),
        ({"eval": {"metrics": {}}}, "`eval` lacks its `metrics` and `items`"),
    ],
)
def test_a_round_file_of_the_wrong_shape_is_refused_with_its_name(tmp_path, change, message):
    record = RoundRecord(round=1, weights=[0.5, 0.5], cluster_scores=[None, None], selected=[0, 1], selected_per_cluster=[1, 1],
                         cumulative_size=2, scorer="loss", scored=True, scored_rows=2, global_step=1, k=2).to_dict()
    path = tmp_path / "round_1.json"
    path.write_text(json.dumps({**record, **change}))
    with pytest.raises(InvalidArgumentError, match=re.escape(message)) as info:
        read_round_file(str(path))
    assert str(path) in str(info.value)
    path.write_text(json.dumps(record)[:30])
    with pytest.raises(InvalidArgumentError, match="truncated or corrupt"):
        read_round_file(str(path))


def test_selection_state_start_and_the_fields_a_stranger_had():
    labels = _labels()
    state = SelectionState.start(labels, 4)
    assert state.k == 4 and state.weights == [0.25] * 4 and state.labels_digest == labels_digest(labels)
    assert SelectionState.from_json(json.dumps({"k": 2, "weights": [0.5, 0.5]}), where="x").weights == [0.5, 0.5]
    names = sorted(f.name for f in dataclasses.fields(SelectionState))
    with pytest.raises(InvalidArgumentError, match=_exactly(
        f"bad.json is not a selection state (fields ['k', 'run_code', 'weights'], expected {names})."
    )):
        SelectionState.from_json(json.dumps({"k": 2, "weights": [0.5, 0.5], "run_code": "x"}), where="bad.json")
    with pytest.raises(InvalidArgumentError, match=_exactly(
        f"bad.json is not a selection state (fields list, expected {names})."
    )):
        SelectionState.from_json("[1, 2]", where="bad.json")


def test_labels_digest_is_stable_across_versions_and_dtypes():
    # Checkpoints hold this digest: it must not change, nor depend on the integer type of the labels.
    pinned = "sha256:c2d8a8e95046798f360dcb6183db0f38f15e2df116ef5221fdce390871392255"
    assert labels_digest(np.array([0, 2, 1, 1, 0, 3])) == pinned
    assert labels_digest(np.array([0, 2, 1, 1, 0, 3], dtype=np.int32)) == pinned


def test_draw_round_uses_the_weights_and_quality_it_is_given():
    labels = _labels()
    trainable = np.ones(len(labels), dtype=bool)
    quality = np.random.default_rng(2).normal(size=len(labels))
    state = SelectionState.start(labels, 4)
    first = draw_round(state, labels, 12, round_index=1, trainable=trainable, selection_seed=3, quality=quality)
    np.testing.assert_array_equal(first, kmq_sample(labels, 12, k=4, seed=3 * 1_000_003 + 1, quality=quality,
                                                    temperature=1.0, eligible=trainable))
    cold = draw_round(state, labels, 12, round_index=1, trainable=trainable, selection_seed=3, quality=quality,
                      quality_temperature=0.1)
    np.testing.assert_array_equal(cold, kmq_sample(labels, 12, k=4, seed=3 * 1_000_003 + 1, quality=quality,
                                                   temperature=0.1, eligible=trainable))
    # Round 2 draws with the weights round 1 left, among the rows not taken yet.
    state.current_rows = first.tolist()
    state.weights = [0.7, 0.1, 0.1, 0.1]
    second = draw_round(state, labels, 20, round_index=2, trainable=trainable, selection_seed=3)
    left = trainable.copy()
    left[first] = False
    np.testing.assert_array_equal(
        second, kmq_sample(labels, 20, k=4, seed=3 * 1_000_003 + 2, weights=np.array(state.weights), eligible=left)
    )
    assert np.bincount(labels[second], minlength=4)[0] > 10  # 0.7 of the weight: most of the round


def test_round_one_draws_without_cluster_weights_even_where_uniform_weights_round_differently():
    # 16 of [3, 13, 4] rows: the ideal shares 2.4, 10.4, 3.2 tie on remainders, and float rounding settles the tie.
    # Plain kMQ (no weights, the rows runs made before drew) gives [2, 11, 3]; uniform weights (1/3 each) would
    # give [3, 10, 3]. Round 1 must be the plain kMQ draw.
    labels = np.repeat(np.arange(3), [3, 13, 4])
    trainable = np.ones(len(labels), dtype=bool)
    state = SelectionState.start(labels, 3)
    first = draw_round(state, labels, 16, round_index=1, trainable=trainable, selection_seed=0)
    assert np.bincount(labels[first], minlength=3).tolist() == [2, 11, 3]


def _close(state, labels, trainable, scores_by_cluster, **options):
    rows = np.asarray(sorted(state.current_rows), dtype=np.int64)
    scores = np.asarray(scores_by_cluster, dtype=float)[labels[rows]]
    settings = dict(rule="softmax", temperature=1.0, scorer="loss", scored=True, global_step=1, k_selection=None)
    return close_round(state, labels, trainable, rows, scores, **{**settings, **options})


def test_close_round_when_the_last_cluster_drew_nothing_or_has_no_trainable_row():
    labels = _labels()  # clusters of 40, 30, 20, 10 rows
    trainable = np.ones(len(labels), dtype=bool)
    state = SelectionState.start(labels, 4)
    state.current_rows = draw_round(state, labels, 4, round_index=1, trainable=trainable, selection_seed=0).tolist()
    record = _close(state, labels, trainable, [1.0, 1.0, 1.0, 1.0])
    assert record.selected_per_cluster == [2, 1, 1, 0] and len(record.weights) == 4
    assert record.cluster_scores == [1.0, 1.0, 1.0, None]  # JSON null: the cluster had no scored row

    trainable[labels == 3] = False  # tokenization dropped every row of the last cluster
    state = SelectionState.start(labels, 4)
    state.current_rows = draw_round(state, labels, 10, round_index=1, trainable=trainable, selection_seed=0).tolist()
    record = _close(state, labels, trainable, [1.0, 1.0, 1.0, 1.0])
    assert record.weights[3] == 0.0 and sum(record.weights) == pytest.approx(1.0)


@pytest.mark.parametrize("rule", ["softmax", "softmax_replace"])
def test_close_round_applies_the_rule_and_temperature_it_is_given(rule):
    labels = _labels()
    trainable = np.ones(len(labels), dtype=bool)
    state = SelectionState.start(labels, 4)
    state.weights = [0.4, 0.3, 0.2, 0.1]
    state.current_rows = draw_round(state, labels, 20, round_index=1, trainable=trainable, selection_seed=0).tolist()
    before = np.array(state.weights)
    scores = [1.0, 0.0, 0.0, 2.0]
    record = _close(state, labels, trainable, scores, rule=rule, temperature=0.5)
    available = np.bincount(labels, minlength=4) - np.bincount(labels[state.selected()], minlength=4)
    expected = update_weights(before, np.array(scores), rule=rule, temperature=0.5, available=available)
    np.testing.assert_allclose(record.weights, expected)
    assert not np.allclose(expected, update_weights(before, np.array(scores), rule=rule, available=available))


@pytest.mark.parametrize("scored", [True, False])
def test_close_round_records_what_it_was_told_and_clears_the_round(scored):
    labels = _labels()
    trainable = np.ones(len(labels), dtype=bool)
    state = SelectionState.start(labels, 4)
    state.current_rows = draw_round(state, labels, 8, round_index=1, trainable=trainable, selection_seed=0).tolist()
    state.pending_losses = [[state.current_rows[0], 1.5]]
    k_selection = {"mode": "auto", "candidates": [2, 4]}
    record = _close(state, labels, trainable, [0.0] * 4, scorer="perplexity", scored=scored, global_step=17,
                    k_selection=k_selection)
    assert (record.scorer, record.scored, record.global_step, record.k, record.k_selection) == (
        "perplexity", scored, 17, 4, k_selection
    )
    assert state.pending_losses == [] and state.current_rows == []
    assert json.loads(state.to_json())["rounds"] == [record.to_dict()]


def test_merge_scores_gathers_ranks_and_keeps_the_last_score_of_a_row():
    rows, scores = merge_scores([(5, 1.0), (2, 0.5), (np.int64(7), np.float32(0.25)), (5, 2.0)])
    assert rows.dtype == np.int64 and scores.dtype == np.float64
    assert rows.tolist() == [2, 5, 7] and scores.tolist() == [0.5, 2.0, 0.25]
    rows, scores = merge_scores([])  # a round in which no rank scored a row
    labels = np.arange(3)
    assert labels[rows].size == 0 and scores.size == 0


def _two_rounds(k):
    labels = _labels()  # clusters 0-3; with k=5, cluster 4 is empty
    trainable = np.ones(len(labels), dtype=bool)
    state = SelectionState.start(labels, k)
    for r in (1, 2):
        state.current_round = r
        state.current_rows = draw_round(state, labels, 6, round_index=r, trainable=trainable, selection_seed=4).tolist()
        _close(state, labels, trainable, [0.0, 0.0, 1.0, 0.0, 0.0][:k])
    return state, labels


def test_selection_manifest_of_every_row_and_of_each_round():
    state, labels = _two_rounds(5)
    recorded = dict(pool={"num_rows": 100}, arguments={"rounds": 2}, k_selection={"mode": "fixed"})
    both = selection_manifest(state, labels, method="iterative_kmq", seed=4, budget_requested=0.12, budget_rows=12,
                              **recorded)
    rows = sorted(state.selected())
    assert (both.method, both.seed, both.k) == ("iterative_kmq", 4, 5)
    assert both.budget == {"requested": 0.12, "rows": 12, "total_rows": 12, "rounds": [1, 2]}
    assert both.selected_indices == rows and both.selected_clusters == labels[rows].tolist()
    assert both.cluster_sizes == [40, 30, 20, 10, 0]
    assert both.selected_per_cluster == np.bincount(labels[rows], minlength=5).tolist()
    assert both.selected_digest == indices_digest(rows)
    assert (both.pool, both.arguments, both.k_selection) == (recorded["pool"], recorded["arguments"],
                                                             recorded["k_selection"])
    json.dumps(both.to_dict())  # plain JSON types
    # Rows decontamination removed carry a label but were in no cluster's draw: cluster sizes count the rows left.
    removed = [*np.flatnonzero(labels == 0)[:2].tolist(), int(np.flatnonzero(labels == 3)[0])]
    cleaned = selection_manifest(state, labels, method="iterative_kmq", seed=4, budget_requested=0.12, budget_rows=12,
                                 decontamination={"removed_indices": removed}, **recorded)
    assert cleaned.cluster_sizes == [38, 30, 20, 9, 0] and cleaned.selected_indices == rows
    assert cleaned.decontamination == {"removed_indices": removed}
    for r in (1, 2):
        one = selection_manifest(state, labels, f"round_{r}", method="iterative_kmq", seed=4, budget_requested=0.12,
                                 budget_rows=12, **recorded)
        mine = sorted(state.rounds[r - 1]["selected"])
        assert one.selected_indices == mine and one.selected_digest == indices_digest(mine)
        assert one.budget == {"requested": 0.12, "rows": 6, "total_rows": 12, "round": r}
        assert one.selected_per_cluster == np.bincount(labels[mine], minlength=5).tolist()


@pytest.mark.parametrize("config", ["round_0", "round_3", "round_x", "final"])
def test_selection_manifest_names_the_rounds_there_are(config):
    state, labels = _two_rounds(4)
    with pytest.raises(InvalidArgumentError, match=_exactly(
        f"`config`={config!r}: the finished rounds are ['round_1', 'round_2'] (or 'default')."
    )):
        selection_manifest(state, labels, config, method="iterative_kmq", seed=4, budget_requested=12, budget_rows=12)


# ------------------------------------------------------------------------------------------------
# Weight rules by name, and the research code's quotas: small cases computed by hand.
# ------------------------------------------------------------------------------------------------


def test_linear_rule_is_the_papers_eq6_as_printed():
    # w_j <- (s_j / sum s) * w_j, renormalised: [.5, .5] with s = [3, 1] -> [3/4, 1/4].
    np.testing.assert_allclose(update_weights([0.5, 0.5], np.array([3.0, 1.0]), rule="linear"), [0.75, 0.25])
    # The old weights multiply: [.2, .8] -> [.2 * 3, .8 * 1] / 1.4 = [3/7, 4/7].
    np.testing.assert_allclose(update_weights([0.2, 0.8], np.array([3.0, 1.0]), rule="linear"), [3 / 7, 4 / 7])
    # Linear, not softmax: scores 2 and 1 split 2:1 (softmax would give e:1).
    np.testing.assert_allclose(update_weights([0.5, 0.5], np.array([2.0, 1.0]), rule="linear"), [2 / 3, 1 / 3])
    # A score <= 0 shifts every score to s - min(s) + T: [1, -1] -> [3, 1] at T = 1, [4, 2] at T = 2.
    np.testing.assert_allclose(update_weights([0.5, 0.5], np.array([1.0, -1.0]), rule="linear"), [0.75, 0.25])
    np.testing.assert_allclose(
        update_weights([0.5, 0.5], np.array([1.0, -1.0]), rule="linear", temperature=2.0), [2 / 3, 1 / 3]
    )
    # Positive scores are used as printed: the temperature does nothing then.
    np.testing.assert_allclose(update_weights([0.5, 0.5], np.array([3.0, 1.0]), rule="linear", temperature=5.0), [0.75, 0.25])
    # An unscored cluster keeps its weight: scored factors 3/6*3, 1/6*3, 2/6*3 = 1.5, 0.5, 1.
    np.testing.assert_allclose(
        update_weights(np.full(4, 0.25), np.array([3.0, 1.0, np.nan, 2.0]), rule="linear"), [0.375, 0.125, 0.25, 0.25]
    )


def test_old_rule_names_still_work_with_a_warning_naming_the_new_one():
    old = np.array([0.2, 0.8])
    scores = np.array([np.log(3.0), 0.0])
    for alias, name in (("paper", "softmax"), ("research", "softmax_replace")):
        with pytest.warns(DeprecationWarning, match=f"`weight_update`='{alias}' is deprecated: it is now called '{name}'") as caught:
            got = update_weights(old, scores, rule=alias)
        assert_warned_at(caught[0], __file__, sys._getframe().f_lineno - 1)  # the caller's line
        np.testing.assert_allclose(got, update_weights(old, scores, rule=name))
    np.testing.assert_allclose(update_weights(old, scores, rule="softmax"), [3 / 7, 4 / 7])
    np.testing.assert_allclose(update_weights(old, scores, rule="softmax_replace"), [0.75, 0.25])


def test_research_code_quotas_are_equal_in_round_one_then_follow_the_weights_alone():
    labels = _labels()  # clusters of 40, 30, 20, 10 rows
    trainable = np.ones(len(labels), dtype=bool)
    state = SelectionState.start(labels, 4)
    first = draw_round(state, labels, 20, round_index=1, trainable=trainable, selection_seed=0, quotas="equal")
    assert np.bincount(labels[first], minlength=4).tolist() == [5, 5, 5, 5]  # int(20 / 4) each
    # 22 rows: 5 each, the 2 left over by largest remainder (ties to the lower cluster id); budgets stay exact.
    extra = draw_round(state, labels, 22, round_index=1, trainable=trainable, selection_seed=0, quotas="equal")
    assert np.bincount(labels[extra], minlength=4).tolist() == [6, 6, 5, 5]
    # A cluster smaller than its quota gives the rest to the others (the research code would crash):
    # 60 rows = 15 each, cluster 3 has 10, the other 50 split 17/17/16.
    capped = draw_round(state, labels, 60, round_index=1, trainable=trainable, selection_seed=0, quotas="equal")
    assert np.bincount(labels[capped], minlength=4).tolist() == [17, 17, 16, 10]
    # The paper's quotas for the same 20 rows are size-proportional.
    sized = draw_round(state, labels, 20, round_index=1, trainable=trainable, selection_seed=0)
    assert np.bincount(labels[sized], minlength=4).tolist() == [8, 6, 4, 2]
    # Later rounds: proportional to the weight alone, whatever is left in each cluster...
    state.current_rows = first.tolist()
    state.weights = [0.5, 0.25, 0.25, 0.0]
    second = draw_round(state, labels, 20, round_index=2, trainable=trainable, selection_seed=0, quotas="equal")
    assert np.bincount(labels[second], minlength=4).tolist() == [10, 5, 5, 0]
    assert not set(second) & set(first)
    # ...where the paper's quotas weigh by the rows left too: shares 0.5 * 35, 0.25 * 25, 0.25 * 15 of 20 rows
    # = 12.73, 4.55, 2.73 -> 12, 4, 2 and the 2 largest remainders -> 13, 4, 3.
    paper = draw_round(state, labels, 20, round_index=2, trainable=trainable, selection_seed=0)
    assert np.bincount(labels[paper], minlength=4).tolist() == [13, 4, 3, 0]
    with pytest.raises(InvalidArgumentError, match=r"`quota`='weights'; choose one of \['proportional', 'equal'\]"):
        draw_round(state, labels, 20, round_index=2, trainable=trainable, selection_seed=0, quotas="weights")



def test_a_state_file_reads_back_what_was_written_whatever_its_layout(tmp_path):
    labels = _labels()
    state = SelectionState.start(labels, 4)
    state.current_rows, state.pool_digest = [3, 50], "sha256:" + "1" * 64
    path = write_state(state, str(tmp_path), {"rounds": 3})
    assert os.listdir(tmp_path) == [STATE_FILE]  # written atomically: no partial file left beside it
    assert read_state(path) == (state, {"rounds": 3})
    # The digest covers the content, not the layout: re-indented with its keys in another order, it reads the same.
    data = json.load(open(path))
    assert data["format_version"] == 2 and data["digest"] == state_digest(data)
    json.dump(dict(reversed(list(data.items()))), open(path, "w"), indent=4)
    assert read_state(path) == (state, {"rounds": 3})
    for text, match in (
        (json.dumps(data)[:-40], "is not valid JSON .* the file is truncated or damaged"),
        (json.dumps({**data, "current_rows": [3, 3]}), "`current_rows` repeats row 3; the file is damaged or was edited"),
        (json.dumps({**data, "current_rows": [3, 51]}), "its content does not match its `digest`"),
        (json.dumps({**data, "weights": [10**400, 0, 0, 0]}), r"`weights` is not a list of 4 finite weights >= 0"),
        (json.dumps({k: v for k, v in data.items() if k != "digest"}), r"missing fields \['digest'\]"),
        ("[" * 100_000, "is not readable"),
        (json.dumps({**data, "plan": {"rounds": 3, "k_selection": json.loads("[" * 40 + "]" * 40)}}), "nested deeper"),
    ):
        open(path, "w").write(text)
        with pytest.raises(InvalidArgumentError, match=f"^`resume_from_checkpoint`: {re.escape(path)}.*{match}"):
            read_state(path)


def test_round_records_refuse_numbers_too_large_for_a_float():
    record = _close_round_record()
    record["weights"] = [10**400, 0.0, 0.0, 0.0]
    with pytest.raises(InvalidArgumentError, match="`weights` is not a list of 4 values"):
        RoundRecord.from_dict(record)


def _close_round_record() -> dict:
    labels = _labels()
    state = SelectionState.start(labels, 4)
    state.current_rows = [0, 40]
    return close_round(state, labels, np.ones(len(labels), dtype=bool), np.array([0, 40]), np.array([1.0, 2.0]),
                       rule="softmax", temperature=1.0, scorer="loss", scored=True, global_step=1, k_selection=None).to_dict()


def test_a_recorded_plan_is_compared_setting_by_setting_and_a_silhouette_up_to_float_noise():
    plan = {"rounds": 3, "weight_update": "softmax", "k_selection": {"mode": "auto", "silhouette": {"4": 0.3125}}}
    noisy = {**plan, "k_selection": {"mode": "auto", "silhouette": {"4": 0.3125 * (1 + 1e-15)}}}
    check_plan(plan, noisy, where="x.json")  # the settings: no outcome is compared unless asked
    check_plan(plan, noisy, where="x.json", outcomes=True)  # k-means on other threads: the last bits of a score
    moved = {**plan, "k_selection": {"mode": "auto", "silhouette": {"4": 0.3126}}}
    with pytest.raises(InvalidArgumentError, match=r"^`resume_from_checkpoint`: x.json was saved by a run with another "
                       r"selection plan \(the choice of k \(`k_selection`\): .*0\.3125\}\} in the checkpoint, .*0\.3126\}\} now\)"):
        check_plan(plan, moved, where="x.json", outcomes=True)
    with pytest.raises(InvalidArgumentError, match=r"\(`rounds`: 3 in the checkpoint, 4 now; `scorer`: not used in the "
                       r"checkpoint, 'loss' now\): resuming would change the selection mid-run"):
        check_plan(plan, {**plan, "rounds": 4, "scorer": "loss"}, where="x.json")
    with pytest.raises(InvalidArgumentError, match="`rounds`: 3 in the checkpoint, True now"):
        check_plan(plan, {**plan, "rounds": True}, where="x.json")


def test_round_summary_names_the_clusters_whose_weight_moved_most():
    """The line a person reads when a round closes: rows drawn this round and so far, and the clusters gaining and
    losing weight most, named by their terms, against the weights before the round (uniform before round 1)."""
    labels = np.repeat(np.arange(4), 6)  # 4 clusters of 6 rows
    trainable = np.ones(len(labels), dtype=bool)
    state = SelectionState.start(labels, 4)
    state.current_rows = [0, 6, 12, 18]
    terms = ["gsm8k, number, total", "def, return, code", "", "hello, thanks"]
    common = dict(rule="softmax", temperature=1.0, scorer="loss", scored=True, k_selection=None, cluster_terms=terms)
    # Cluster 0 still has a high loss (its weight rises), cluster 1 is learned (its weight falls towards 0).
    close_round(state, labels, trainable, np.array([0, 6, 12, 18]), np.array([3.0, -3.0, 0.5, 0.5]), global_step=1, **common)
    line = round_summary(state, rounds=3, budget_rows=12)
    w = state.weights
    assert w[0] > 0.25 > w[1] and w[1] < 0.1 / 4
    assert line == (
        f"round 1/3: drew 4 rows (4 of 12); weight up: cluster 0 'gsm8k, number, total' 0.25 -> {w[0]:.3g}; "
        f"down: cluster 1 'def, return, code' 0.25 -> {w[1]:.3g} (starved)"
    )
    assert "\n" not in line
    # Every cluster named: equal moves (clusters 2 and 3) in cluster order.
    assert round_summary(state, rounds=3, budget_rows=12, clusters=4) == (
        f"round 1/3: drew 4 rows (4 of 12); weight up: cluster 0 'gsm8k, number, total' 0.25 -> {w[0]:.3g}; "
        f"down: cluster 1 'def, return, code' 0.25 -> {w[1]:.3g} (starved); cluster 2 0.25 -> {w[2]:.3g}; "
        f"cluster 3 'hello, thanks' 0.25 -> {w[3]:.3g}"
    )

    # Round 2 is compared with round 1's weights; a cluster without terms is named by its id alone, and two a side.
    before = list(state.weights)
    state.current_round, state.current_rows = 2, [1, 2, 13, 19]
    close_round(state, labels, trainable, np.array([1, 2, 13, 19]), np.array([-1.0, -1.0, 2.0, 0.0]), global_step=2, **common)
    line = round_summary(state, rounds=3, budget_rows=12, clusters=2)
    after = state.weights
    # Cluster 1 gained too (+0.005), less than cluster 3 (+0.007): two a side leaves it out.
    assert after[1] - before[1] < after[3] - before[3] < after[2] - before[2]
    assert line == (
        f"round 2/3: drew 4 rows (8 of 12); weight up: cluster 2 {before[2]:.3g} -> {after[2]:.3g}; "
        f"cluster 3 'hello, thanks' {before[3]:.3g} -> {after[3]:.3g}; "
        f"down: cluster 0 'gsm8k, number, total' {before[0]:.3g} -> {after[0]:.3g}"
    )
    # A weight of exactly a tenth of an equal share (1/k) is not starved; one below it is.
    for weight, mark in [(0.025, ""), (0.0249, " (starved)")]:
        edited = SelectionState.from_json(state.to_json(), where="test")
        edited.rounds[-1] = {**edited.rounds[-1], "weights": [weight, 0.3, 0.5, 0.2 - weight]}
        assert round_summary(edited, rounds=3, budget_rows=12) == (
            f"round 2/3: drew 4 rows (8 of 12); weight up: cluster 2 {before[2]:.3g} -> 0.5; "
            f"down: cluster 0 'gsm8k, number, total' {before[0]:.3g} -> {weight:.3g}{mark}"
        )

    # An unscored last round keeps the weights; a cluster with no rows left drops to 0 and says so.
    state.current_round, state.current_rows = 3, [3, 4, 5, 14]
    close_round(state, labels, trainable, np.zeros(0, dtype=np.int64), np.zeros(0), **{**common, "scored": False}, global_step=3)
    line = round_summary(state, rounds=3, budget_rows=12)
    last = state.weights
    assert last[0] == 0  # rows 0-5 are all drawn now
    assert line == (
        f"round 3/3: drew 4 rows (12 of 12); weight up: cluster 2 {after[2]:.3g} -> {last[2]:.3g}; "
        f"down: cluster 0 'gsm8k, number, total' {after[0]:.3g} -> 0 (exhausted)"
    )
    unchanged = SelectionState.from_json(state.to_json(), where="test")
    unchanged.rounds[-1] = {**unchanged.rounds[-1], "weights": unchanged.rounds[-2]["weights"]}
    assert round_summary(unchanged, rounds=3, budget_rows=12) == (
        "round 3/3: drew 4 rows (12 of 12); weights unchanged (round not scored)"
    )
    # A scored round whose scores left every weight where it was says only that; a run without terms names ids.
    unchanged.rounds[-1] = {**unchanged.rounds[-1], "scored": True}
    assert round_summary(unchanged, rounds=3, budget_rows=12) == "round 3/3: drew 4 rows (12 of 12); weights unchanged"
    unnamed = SelectionState.from_json(state.to_json(), where="test")
    unnamed.rounds[-1] = {**unnamed.rounds[-1], "cluster_terms": None}
    assert round_summary(unnamed, rounds=3, budget_rows=12) == (
        f"round 3/3: drew 4 rows (12 of 12); weight up: cluster 2 {after[2]:.3g} -> {last[2]:.3g}; "
        f"down: cluster 0 {after[0]:.3g} -> 0 (exhausted)"
    )


def test_a_state_resumes_only_on_its_own_clustering_and_unchanged_pool_rows(caplog):
    """The checks a checkpoint's state runs before its row ids are trusted: the clustering's digest must match, and
    the pool's content digest too; a state from before content digests is resumed with a warning naming the file."""
    labels = np.repeat(np.arange(3), 4)
    state = SelectionState.start(labels, 3)
    state.pool_digest = "abc"
    state.check_resumable(labels_digest(labels), "abc", ["messages"], where="ckpt/state.json")  # nothing to refuse
    with pytest.raises(InvalidArgumentError, match=r"^`resume_from_checkpoint`: ckpt/state.json was made with a "
                       r"different clustering of the pool \(a different pool, encoder, k or seed\): resume with the "
                       r"pool and arguments of that run, or start a new run\.$"):
        state.check_resumable(labels_digest(labels[::-1]), "abc", ["messages"], where="ckpt/state.json")
    with pytest.raises(InvalidArgumentError, match=r"^`resume_from_checkpoint`: the content of the pool changed since "
                       r"ckpt/state.json was saved \(columns \['messages', 'quality'\]: rows edited, reordered or "
                       r"replaced\), so its row ids would point at other rows\. Resume with the unchanged pool, or start a "
                       r"new run\.$"):
        state.check_resumable(labels_digest(labels), "abd", ["messages", "quality"], where="ckpt/state.json")
    old = SelectionState.start(labels, 3)  # pool_digest "": written before content checks
    with caplog.at_level("WARNING", logger="hf_idsel.rounds"):
        old.check_resumable(labels_digest(labels), "anything", ["messages"], where="ckpt/state.json")
    assert caplog.messages == [
        "ckpt/state.json predates content checks: only its clustering was verified, not the content of the pool's rows."
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_idsel.rounds"):
        state.check_resumable(labels_digest(labels), "abc", ["messages"], where="ckpt/state.json")
    assert caplog.messages == []  # a state with a digest that matches resumes silently


def test_old_quota_names_map_to_the_new_ones_with_a_warning_naming_the_argument():
    def config_field(value):  # the config's own check calls canonical_quota: the warning points past it, at the user
        return canonical_quota(value, "round_quotas")

    for old, new in [("size", "proportional"), ("weights", "equal")]:
        with pytest.warns(FutureWarning) as caught:
            assert config_field(old) == new
        assert [str(w.message) for w in caught] == [
            f"`round_quotas`={old!r} is deprecated: it is now called {new!r} (same behaviour). Pass {new!r}."
        ]
        assert_warned_at(caught[0], __file__, sys._getframe().f_lineno - 4)
    with pytest.warns(FutureWarning, match=re.escape("`quota`='size' is deprecated")):  # the trainer's argument by default
        assert canonical_quota("size") == "proportional"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # current names and values that are no name pass through silently
        for value in ("proportional", "equal", "other", None, 3):
            assert canonical_quota(value) == value


def test_equal_quotas_draw_a_clusters_last_row_and_skip_clusters_with_none_left():
    """Equal quotas divide by the rows left in each cluster: a cluster down to its last row still gets its equal
    share (one row), and one with no row left (the last cluster here, which `bincount` alone would not count) gets
    none, without breaking the draw."""
    labels = np.array([0] * 1 + [1] * 10 + [2] * 10)
    trainable = np.ones(len(labels), dtype=bool)
    state = SelectionState.start(labels, 3)
    counts = [np.bincount(labels[draw_round(state, labels, size, round_index=2, trainable=trainable, selection_seed=0,
                                            quotas="equal")], minlength=3).tolist() for size in (1, 2, 3, 5)]
    assert counts == [[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 2, 2]]
    state.current_rows = list(range(11, 21))  # the last cluster is used up
    rows = draw_round(state, labels, 5, round_index=2, trainable=trainable, selection_seed=0, quotas="equal")
    assert np.bincount(labels[rows], minlength=3).tolist() == [1, 4, 0]


def test_a_target_prior_multiplies_every_rounds_weights():
    """`target_prior` reads a target record's `affinity ** sharpness`; `draw_round` multiplies it into round 1's kMQ
    quotas (proportional to prior x rows) and into later rounds' learned weights."""
    assert target_prior(None) is None
    np.testing.assert_array_equal(target_prior({"cluster_affinity": [1.0, 0.5, 0.0], "sharpness": 2.0}), [1.0, 0.25, 0.0])
    np.testing.assert_array_equal(target_prior({"cluster_affinity": [1.0, 0.5, 0.0], "sharpness": 0.0}), [1.0, 1.0, 1.0])
    prior = target_prior({"cluster_affinity": [1.0, 0.5, 0.0], "sharpness": 1.0})
    labels = np.repeat(np.arange(3), 20)
    trainable = np.ones(len(labels), dtype=bool)
    state = SelectionState.start(labels, 3)

    def drawn(round_index, **kwargs):
        rows = draw_round(state, labels, 12, round_index=round_index, trainable=trainable, selection_seed=0, prior=prior,
                          **kwargs)
        return np.bincount(labels[rows], minlength=3).tolist()

    assert drawn(1) == drawn(1, quotas="equal") == [8, 4, 0]
    state.weights = [0.25, 0.5, 0.25]  # learned: prior x weights = 0.25, 0.25, 0
    assert drawn(2) == [6, 6, 0]


def test_a_linear_rule_shifts_scores_whose_lowest_is_exactly_zero():
    """Eq. 6 as printed needs positive scores: a lowest score of exactly 0 is shifted like a negative one, so that
    cluster keeps a share set by the temperature instead of dropping to weight 0."""
    np.testing.assert_allclose(update_weights([1 / 3] * 3, [0.0, 1.0, 3.0], rule="linear", temperature=1.0),
                               [1 / 7, 2 / 7, 4 / 7])
    np.testing.assert_allclose(update_weights([1 / 3] * 3, [0.5, 1.0, 3.0], rule="linear", temperature=1.0),
                               [1 / 9, 2 / 9, 6 / 9])  # all positive: used as they are


def _record(**changes) -> dict:
    record = RoundRecord(round=1, weights=[0.5, 0.5], cluster_scores=[1.0, None], selected=[0, 3],
                         selected_per_cluster=[2, 0], cumulative_size=2, scorer="loss", scored=True, scored_rows=2,
                         global_step=4, k=2, cluster_terms=["a b", "c"], weight_update="softmax").to_dict()
    return {**record, **changes}


def test_round_records_take_every_value_at_its_lower_bound():
    """The smallest legal counts, NaN cluster scores (a mean over nothing written by hand) and no terms are valid."""
    record = RoundRecord.from_dict(_record(cumulative_size=0, scored_rows=0, global_step=0, cluster_terms=None,
                                           cluster_scores=[float("nan"), None], selected=[]))
    assert (record.cumulative_size, record.scored_rows, record.global_step, record.cluster_terms) == (0, 0, 0, None)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(round=0), "`round`=0 is not an integer >= 1"),
        (dict(cumulative_size=-1, global_step=-1), "`cumulative_size`=-1 is not an integer >= 0; `global_step`=-1 is not an integer >= 0"),
        (dict(k=0), "`k`=0 is not a positive integer"),
        (dict(k="2", weights=[-1.0, 1.0]), "`k`='2' is not a positive integer; `weights` is not a list of k values, one per cluster"),
        (dict(cluster_scores=[1.0, "high"]), "`cluster_scores` is not a list of 2 values, one per cluster"),
        (dict(cluster_terms=[1, 2]), "`cluster_terms` is not a list of 2 values, one per cluster"),
        (dict(cluster_terms=None, weights=[0.5]), "`weights` is not a list of 2 values, one per cluster"),
        (dict(selected=[0, -3]), "`selected` is not a list of pool rows"),
        (dict(scorer=3), "`scorer`=3 is not a name"),
        (dict(scored="yes"), "`scored`='yes' is not true or false"),
        (dict(weight_update=1), "`weight_update`=1 is not a rule's name"),
        (dict(k_selection=[2]), "`k_selection` is not a JSON object"),
        (dict(eval={"metrics": {}}), "`eval` lacks its `metrics` and `items`"),
        (dict(eval=[1], scorer=None), "`scorer`=None is not a name; `eval` is not a JSON object"),
    ],
)
def test_round_records_name_every_wrong_field(changes, message):
    round_number = changes.get("round", 1)
    with pytest.raises(InvalidArgumentError, match=_exactly(f"Not a round record (round {round_number!r}): {message}.")):
        RoundRecord.from_dict(_record(**changes))


def test_a_round_record_that_is_not_an_object_is_refused_naming_what_it_is():
    with pytest.raises(InvalidArgumentError, match=_exactly("Not a round record: a JSON object was expected, got list.")):
        RoundRecord.from_dict([1, 2])
