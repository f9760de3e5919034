"""Issue 28.6: nothing a manifest replays (`load_selection(..., recompute=True)`) can ask for unbounded memory or time.

Each test edits one replayed setting of a real manifest. The edit leaves every digest valid (the recorded arguments
are not covered by one), so the manifest itself loads and gives its rows without `recompute`: only the bound stops the
re-run. The bound is checked before any work: the pool is not read, nothing is embedded, `diverse_select` never runs.
"""

import json
import time

import pytest

from hf_idsel import diverse_select, load, load_selection
from hf_idsel.arguments import MAX_EXCLUDE_NGRAM, MAX_K_CANDIDATES, MAX_KMEANS_NITER, MAX_NAME_LENGTH
from hf_idsel.errors import InvalidArgumentError
from hf_idsel.manifest import Manifest
from hf_idsel.render import MAX_FORMAT_WIDTH, MAX_TEMPLATE_FIELDS, MAX_TEMPLATE_LENGTH


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A real selection on a pool with text and vectors, and its manifest as a dict."""
    import datasets
    import numpy as np

    from helpers import planted_blobs

    vectors, labels = planted_blobs(6, 20, dim=16, seed=2)
    pool = datasets.Dataset.from_dict(
        {
            "text": [f"row {i} of topic {t} about words and more words" for i, t in enumerate(labels)],
            "embedding": vectors.tolist(),
            "quality": np.random.default_rng(0).normal(size=len(labels)).tolist(),
        }
    )
    subset, manifest = diverse_select(pool, 24, embedding_column="embedding", k=6, seed=3, return_manifest=True)
    return pool, subset, manifest.to_dict()


@pytest.fixture
def spy(monkeypatch):
    """Records whether the re-run started work: the pool check and `diverse_select` (both passed on to the real ones)."""
    calls = []
    real_select, real_check = load.diverse_select, Manifest.check_pool

    def select(*args, **kwargs):
        calls.append("diverse_select")
        return real_select(*args, **kwargs)

    def check_pool(self, pool):
        calls.append("check_pool")
        return real_check(self, pool)

    monkeypatch.setattr(load, "diverse_select", select)
    monkeypatch.setattr(Manifest, "check_pool", check_pool)
    return calls


def _hostile(made, tmp_path, arguments=None, **fields):
    _, _, data = made
    data = json.loads(json.dumps(data))
    data["arguments"].update(arguments or {})
    data.update(fields)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


HOSTILE = [
    # (recorded arguments, the field the error names, what it says)
    ({"template": "{text:>20000000}"}, "arguments.template", rf"width of {{text}} is 20000000; .* at most {MAX_FORMAT_WIDTH}"),
    ({"template": "{text:.900000f}"}, "arguments.template", r"precision of \{text\} is 900000"),
    ({"template": "{text:{text}}"}, "arguments.template", r"format spec of \{text\} holds a replacement field"),
    ({"template": "{text}" * (MAX_TEMPLATE_FIELDS + 1)}, "arguments.template", rf"at most {MAX_TEMPLATE_FIELDS}"),
    ({"template": "x" * (MAX_TEMPLATE_LENGTH + 1) + "{text}"}, "arguments.template", rf"at most {MAX_TEMPLATE_LENGTH}"),
    ({"template": "{"}, "arguments.template", r"not a str.format template"),
    ({"template": "{text.__class__}"}, "arguments.template", r"reads an attribute or an item"),
    ({"kmeans_niter": 2**31 - 1}, "arguments.kmeans_niter", rf"int in \[1, {MAX_KMEANS_NITER}\]"),
    ({"k": "auto", "k_candidates": list(range(2, 2 + MAX_K_CANDIDATES + 1))}, "arguments.k_candidates", rf"at most {MAX_K_CANDIDATES}"),
    ({"k": 10**6}, "arguments.k", r"is not the manifest's `k`=6"),
    ({"k": 5}, "arguments.k", r"is not the manifest's `k`=6"),
    ({"k": "auto"}, "arguments.k", r"records a fixed `k`=6"),
    ({"budget": 10**9}, "arguments.budget", r"more than the pool has \(120 rows\)"),
    ({"budget": 10**400}, "arguments.budget", r"more than the pool has"),
    ({"exclude_ngram": 10**9}, "arguments.exclude_ngram", rf"int in \[1, {MAX_EXCLUDE_NGRAM}\]"),
    ({"exclude_ngram_threshold": 1.5}, "arguments.exclude_ngram_threshold", r"in \(0, 1\]"),
    ({"exclude_cosine_threshold": -1}, "arguments.exclude_cosine_threshold", r"in \(0, 1\]"),
    ({"dedup_threshold": float("nan")}, "arguments.dedup_threshold", r"finite number"),
    ({"deita_threshold": 0}, "arguments.deita_threshold", r"in \(0, 1\]"),
    ({"qdit_alpha": 10**400}, "arguments.qdit_alpha", r"finite number in \[0, 1\]"),
    ({"quality_temperature": 0.0}, "arguments.quality_temperature", r"finite number > 0"),
    ({"quality_temperature": 10**400}, "arguments.quality_temperature", r"finite number > 0"),
    ({"budget": None, "max_tokens": 10**400}, "arguments.max_tokens", r"must be an int in \[1, "),
    ({"text_column": "c" * (MAX_NAME_LENGTH + 1)}, "arguments.text_column", rf"at most {MAX_NAME_LENGTH}"),
    ({"quality_weighting": "exp"}, "arguments.quality_weighting", r"choose one of"),
]


@pytest.mark.parametrize("arguments, field, match", HOSTILE, ids=[f"{f}={str(a)[:40]}" for a, f, _ in HOSTILE])
def test_a_replayed_setting_past_its_bound_is_refused_before_any_work(made, tmp_path, spy, arguments, field, match):
    pool, subset, _ = made
    path = _hostile(made, tmp_path, arguments)
    # Sealed: the edited manifest passes every digest and gives its recorded rows.
    assert load_selection(path, pool).to_dict() == subset.to_dict()
    spy.clear()
    start = time.perf_counter()
    with pytest.raises(InvalidArgumentError, match=match) as caught:
        load_selection(path, pool, recompute=True)
    assert time.perf_counter() - start < 5
    message = str(caught.value)
    assert f"`{field}` of manifest" in message and "\n" not in message
    assert len(message) < 1_000  # the hostile value is quoted cut short
    assert spy == []  # refused before the pool was read or anything selected


def test_the_same_bounds_hold_for_a_call(made):
    """The replay checks are a call's checks: the bounds are no stricter for a manifest than for a caller."""
    pool, _, _ = made
    for arguments, field, match in HOSTILE:
        name = field.split(".")[1]
        if name == "k" or name == "budget":
            continue  # judged against the manifest's k and pool: a call's k and budget are judged against its pool
        call = {"budget": 24, "k": 6, "embedding_column": "embedding", **arguments}
        with pytest.raises(InvalidArgumentError, match=f"`{name}`"):
            diverse_select(pool, **call)


def test_the_encoder_a_manifest_names_is_a_bounded_name(made, tmp_path, spy):
    pool, _, _ = made
    for value in ["m" * (MAX_NAME_LENGTH + 1), ["a", "list"], 7, ""]:
        path = _hostile(made, tmp_path, {"encoder": value, "embedding_column": None})
        with pytest.raises(InvalidArgumentError, match=r"`arguments.encoder`=.* is not a model id"):
            load_selection(path, pool, recompute=True)
    path = _hostile(made, tmp_path, {"encoder_revision": {"nested": 1}})
    with pytest.raises(InvalidArgumentError, match=r"`arguments.encoder_revision`="):
        load_selection(path, pool, recompute=True)
    assert spy == []


@pytest.mark.parametrize(
    "setting, value, match",
    [("dim", 10**9, r"`encoder.dim`=1000000000 must be an int in \[1, 65536\]"),
     ("max_length", 2**40, r"`encoder.max_length`=1099511627776 must be an int in \[8, 131072\]"),
     ("layer", -7, r"`encoder.layer`=-7"),
     ("projection_seed", 2**40, r"`encoder.projection_seed`")],
)
def test_a_hidden_state_encoder_record_is_bounded_before_the_model_loads(made, tmp_path, spy, monkeypatch, setting, value, match):
    """The caller names the causal LM (consent to load it); the manifest's `encoder` entry only sets its layer,
    max_length and projection, and those are bounded before anything loads."""
    from hf_idsel import hidden_states

    loads = []
    monkeypatch.setattr(hidden_states, "HiddenStateEncoder", lambda *a, **k: loads.append((a, k)))
    pool, _, _ = made
    name = hidden_states.PREFIX + "some/causal-lm"
    record = {"id": name, "revision": None, "dim": 16, "layer": -1, "pooling": "mean", "max_length": 512,
              "projection": "random", "projection_seed": 0, setting: value}
    path = _hostile(made, tmp_path, {"encoder": name, "embedding_column": None}, encoder=record)
    with pytest.raises(InvalidArgumentError, match=match):
        load_selection(path, pool, recompute=True, encoder=name)
    assert loads == [] and spy == []


def test_a_manifest_within_the_bounds_replays(made, spy):
    """The bounds refuse nothing a real selection records: the unedited manifest re-runs to the same rows."""
    pool, subset, data = made
    assert load_selection(data, pool, recompute=True).to_dict() == subset.to_dict()
    assert spy == ["check_pool", "diverse_select"]
