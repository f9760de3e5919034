"""Property tests of issue 28 ("Done means"): streamed pools of any shape select what the pool loaded whole selects, a
run resumed at any round boundary draws the rows of the uninterrupted run, and random hostile argument values (a
caller's or a manifest's) end in the result or an `InvalidArgumentError`, never another exception, and never in
unbounded work. Each runs in a few seconds under the `ci` profile (tests/conftest.py).
"""

import contextlib
import json
import math
import os
import string

import datasets
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hf_idsel import diverse_select, load, load_selection
from hf_idsel.checkpoint import load_state, write_state
from hf_idsel.errors import InvalidArgumentError, SelectionMismatchError
from hf_idsel.render import (
    MAX_FORMAT_WIDTH,
    MAX_TEMPLATE_FIELDS,
    MAX_TEMPLATE_LENGTH,
    render_batch,
    resolve_render_options,
    validate_columns,
)
from hf_idsel.rounds import SelectionState, close_round, draw_round, round_sizes

from helpers import examples, planted_blobs

_FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


# ---- streamed pools: the same rows as the pool loaded whole, whatever its shape ----


def _blob_pool(rows: int, seed: int) -> datasets.Dataset:
    vectors, labels = planted_blobs(5, 40, dim=8, seed=seed)
    order = np.random.default_rng(seed).permutation(len(labels))[:rows]
    return datasets.Dataset.from_dict(
        {
            "text": [f"row {i} of blob {labels[j]}" for i, j in enumerate(order)],
            "embedding": vectors[order].tolist(),
            "quality": np.cos(order * 0.7).tolist(),
            "origin": [f"s{j % 3}" for j in order],
        }
    )


@settings(max_examples=examples(5), deadline=None, suppress_health_check=_FIXTURES)
@given(
    rows=st.integers(12, 80), shards=st.integers(1, 4), batch=st.sampled_from([16, 40, 1024]), seed=st.integers(0, 3),
    method=st.sampled_from(["kmq", "random", "kmeans-closest", "kcenter", "balanced-random"]), k=st.integers(1, 6),
    budget=st.one_of(st.integers(1, 12), st.floats(0.05, 0.5)),
)
def test_a_stream_of_any_shape_selects_the_rows_of_the_whole_pool(tmp_path, rows, shards, batch, seed, method, k, budget):
    """Any pool size, shard count and read batch (a batch smaller than k, a last batch of one row): the stream's
    subset and manifest are the whole pool's."""
    from hf_idsel import stream as stream_module

    pool = _blob_pool(rows, seed)
    call = {"method": method, "k": k, "seed": seed, "embedding_column": "embedding", "return_manifest": True,
            "source_column": "origin" if method == "balanced-random" else None, "cache_dir": str(tmp_path)}
    outcomes = []
    for source, patch in ((pool, {}), (pool.to_iterable_dataset(num_shards=min(shards, rows)), {"STREAM_BATCH": batch})):
        with pytest.MonkeyPatch.context() as context:
            for name, value in patch.items():
                context.setattr(stream_module, name, value)
            try:
                outcomes.append(diverse_select(source, budget, **call))
            except InvalidArgumentError as err:
                outcomes.append(err)
    whole, streamed = outcomes
    if isinstance(whole, InvalidArgumentError) or isinstance(streamed, InvalidArgumentError):
        event("refused")
        assert type(whole) is type(streamed), (whole, streamed)
        return
    (subset, manifest), (expected_subset, expected) = streamed, whole
    assert subset.to_dict() == expected_subset.to_dict()
    assert manifest.selected_indices == expected.selected_indices and manifest.selected_clusters == expected.selected_clusters
    assert manifest.pool["num_rows"] == rows and manifest.pool["digest"] == expected.pool["digest"]


# ---- resume: any round boundary draws the rows of the uninterrupted run ----


def _round_scores(rows: np.ndarray, round_index: int) -> np.ndarray:
    # A stand-in for the trained model's losses: fixed by the row and the round, as a resumed run would measure them.
    return np.cos(rows * 0.37 + round_index)


def _run(labels, trainable, quality, plan, k, *, folder=None, stop=None, resume_from=None):
    """Every round of a run: draw, score, re-weight. With `stop`, write the state at the start of round `stop` (its
    rows drawn, as a checkpoint holds them) and stop; with `resume_from`, continue from that state file."""
    sizes = plan["round_sizes"]
    if resume_from is None:
        state, first = SelectionState.start(labels, k), 1
        state.pool_digest = "sha256:pool"
    else:
        state, _ = load_state(resume_from, plan, k=k, labels=labels, trainable=trainable, quality=quality,
                              pool={"digest": "sha256:pool", "digest_columns": ["text"]})
        first = state.current_round
    for r in range(first, len(sizes) + 1):
        if not (resume_from is not None and r == first):
            state.current_round = r
            state.current_rows = draw_round(
                state, labels, sizes[r - 1], round_index=r, trainable=trainable, selection_seed=plan["selection_seed"],
                quality=quality, quality_temperature=plan["quality_temperature"], quotas=plan["quota"],
            ).tolist()
        if r == stop:
            return write_state(state, folder, plan)
        rows = np.asarray(state.current_rows, dtype=np.int64)
        scored = r < len(sizes) or plan["score_last_round"]
        if not scored:
            rows = rows[:0]
        close_round(state, labels, trainable, rows, _round_scores(rows, r), rule=plan["weight_update"],
                    temperature=plan["weight_temperature"], scorer=plan["scorer"], scored=scored, global_step=r,
                    k_selection=plan["k_selection"])
        state.epochs_done += 1
        state.epoch_end_steps.append(r)
    return [record["selected"] for record in state.rounds]


@settings(max_examples=examples(60), deadline=None, suppress_health_check=_FIXTURES)
@given(
    n=st.integers(20, 150), k=st.integers(1, 8), budget=st.integers(1, 60), rounds=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1), rule=st.sampled_from(["softmax", "linear", "softmax_replace"]),
    quota=st.sampled_from(["proportional", "equal"]), weight_temperature=st.sampled_from([0.1, 1.0, 10.0]),
    quality=st.booleans(), untrainable=st.integers(0, 10), last=st.booleans(), data=st.data(),
)
def test_a_run_resumed_at_any_round_boundary_draws_the_same_rows(
    tmp_path, n, k, budget, rounds, seed, rule, quota, weight_temperature, quality, untrainable, last, data
):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, size=n)
    trainable = np.ones(n, dtype=bool)
    trainable[rng.choice(n, size=untrainable, replace=False)] = False
    budget = min(budget, int(trainable.sum()))
    rounds = min(rounds, budget)
    plan = {
        "round_sizes": round_sizes(budget, rounds), "epochs_per_round": 1, "k_selection": {"mode": "fixed"},
        "cluster_terms": None, "scorer": "loss", "score_last_round": last, "weight_update": rule,
        "weight_temperature": weight_temperature, "selection_seed": seed, "quality_temperature": 0.5, "quota": quota,
    }
    scores = rng.normal(size=n) if quality else None
    full = _run(labels, trainable, scores, plan, k)
    assert sum(len(rows) for rows in full) == budget and len({r for rows in full for r in rows}) == budget
    stop = data.draw(st.integers(1, rounds), label="resume at the start of round")
    folder = tmp_path / f"checkpoint-{stop}"
    folder.mkdir(exist_ok=True)
    path = _run(labels, trainable, scores, plan, k, folder=str(folder), stop=stop)
    assert _run(labels, trainable, scores, plan, k, resume_from=path) == full


# ---- argument validation: random hostile values end in the result or an InvalidArgumentError ----

POOL = _blob_pool(60, 1)
_HUGE_INTS = st.one_of(st.integers(), st.integers(2**31, 10**30), st.just(10**400), st.just(-(10**400)))
_NUMBERS = st.one_of(
    _HUGE_INTS, st.floats(allow_nan=True, allow_infinity=True), st.fractions(), st.decimals(allow_nan=True),
    st.booleans(),
)
_ARRAYS = st.one_of(
    st.integers(-3, 70).map(np.array), st.floats(-2, 2).map(np.float32), st.integers(-3, 70).map(np.int16),
    st.lists(st.integers(0, 9), max_size=3).map(np.array), st.just(np.zeros((2, 2))),
)
_TEMPLATE_TEXT = st.text(alphabet="{}!:.<>^=+-#,_0123456789dfsrxaeno% text", max_size=24)
_VALUES = st.one_of(
    _NUMBERS, _ARRAYS, _TEMPLATE_TEXT, st.none(), st.text(max_size=8),
    st.lists(st.one_of(_HUGE_INTS, st.text(max_size=3)), max_size=4), st.binary(max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_ARGUMENTS = [
    "budget", "method", "k", "seed", "max_tokens", "quality_column", "source_column", "quality_temperature",
    "quality_weighting", "quota", "format", "text_column", "template", "embed_answer", "dedup_threshold",
    "deita_threshold", "qdit_alpha", "k_candidates", "kmeans_niter", "encode_batch_size", "exclude_ngram",
    "exclude_ngram_threshold", "exclude_cosine_threshold", "num_proc", "desc", "keep_in_memory",
]


@pytest.mark.filterwarnings("ignore::FutureWarning")
@settings(max_examples=examples(150), deadline=None, suppress_health_check=_FIXTURES)
@given(changes=st.dictionaries(st.sampled_from(_ARGUMENTS), _VALUES, min_size=1, max_size=3))
def test_random_hostile_values_end_in_the_selection_or_an_invalid_argument_error(tmp_path, changes):
    kwargs = {"budget": 12, "k": 4, "embedding_column": "embedding", "cache_dir": str(tmp_path), **changes}
    try:
        subset = diverse_select(POOL, **kwargs)
    except InvalidArgumentError as err:
        message = str(err)
        assert "\n" not in message.strip() and len(message) < 2_000, message
        event("refused")
        return
    event("selected")
    assert 1 <= len(subset) <= len(POOL) and len(set(subset["source_index"])) == len(subset)


_TEMPLATE_TABLE = POOL.select_columns(["text"]).add_column("n", list(range(len(POOL)))).add_column("x", POOL["quality"])
_TEMPLATE_ROWS = _TEMPLATE_TABLE[:]


@settings(max_examples=examples(300), deadline=None)
@given(template=_TEMPLATE_TEXT)
def test_a_template_the_checks_accept_renders_every_row_within_its_bound(template):
    """The template checks and the rendering agree: a template that passes renders every row (text, int and float
    columns) without an error, into at most the template's length plus, per field, the value or the field's width."""
    table = _TEMPLATE_TABLE
    template = template.replace(" text", "{text}").replace(" x", "{x}").replace(" n", "{n}")
    try:
        options = resolve_render_options(table.column_names, template=template, include_answer=True)
        validate_columns(table.data.table, options)
    except InvalidArgumentError as err:
        assert "`template" in str(err)
        event("refused")
        return
    event("accepted")
    prompts, _ = render_batch(_TEMPLATE_ROWS, options)
    fields = len(options.columns["fields"])
    assert fields <= MAX_TEMPLATE_FIELDS and len(template) <= MAX_TEMPLATE_LENGTH
    longest = max(len(v) for v in _TEMPLATE_ROWS["text"]) + 30
    assert all(len(p) <= len(template) + fields * max(longest, MAX_FORMAT_WIDTH + 30) for p in prompts)


# ---- a manifest's replayed settings: past a bound, refused before any work ----


@pytest.fixture(scope="module")
def sealed():
    subset, manifest = diverse_select(POOL, 12, k=4, embedding_column="embedding", return_manifest=True)
    return subset, manifest.to_dict()


_COSTLY = {  # a setting whose cost grows with its value, and values past its bound
    "template": st.one_of(
        st.integers(MAX_FORMAT_WIDTH + 1, 10**12).map(lambda w: f"{{text:>{w}}}"),
        st.integers(MAX_FORMAT_WIDTH + 1, 10**12).map(lambda p: f"{{quality:.{p}f}}"),
        st.integers(MAX_TEMPLATE_FIELDS + 1, 500).map(lambda n: "{text}" * n),
        st.integers(MAX_TEMPLATE_LENGTH + 1, 3 * MAX_TEMPLATE_LENGTH).map(lambda n: "{text}" + "x" * n),
    ),
    "kmeans_niter": st.integers(1_001, 10**400),
    "k_candidates": st.integers(65, 300).map(lambda n: list(range(2, 2 + n))),
    "exclude_ngram": st.integers(65, 10**400),
    "budget": st.integers(61, 10**400),
    "k": st.integers(61, 10**400),
    "max_tokens": st.integers(2**62 + 1, 10**400),
    "text_column": st.integers(4_097, 20_000).map(lambda n: "c" * n),
}


@settings(max_examples=examples(40), deadline=None, suppress_health_check=_FIXTURES)
@given(data=st.data())
def test_a_replayed_setting_past_its_bound_is_refused_before_the_pool_is_read(sealed, tmp_path, monkeypatch, data):
    subset, record = sealed
    name = data.draw(st.sampled_from(sorted(_COSTLY)), label="setting")
    value = data.draw(_COSTLY[name], label="value")
    record = json.loads(json.dumps(record))
    record["arguments"][name] = value
    if name == "k_candidates":
        record["arguments"]["k"] = "auto"
    if name == "max_tokens":
        record["arguments"]["budget"] = None
    started = []
    monkeypatch.setattr(load, "diverse_select", lambda *a, **k: started.append(a))
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(record))
    with pytest.raises(InvalidArgumentError, match=rf"`arguments\.{name}` of manifest") as caught:
        load_selection(str(path), POOL, recompute=True)
    assert started == [] and "\n" not in str(caught.value) and len(str(caught.value)) < 1_500
