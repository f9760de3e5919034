"""Decontamination: pool rows that copy or nearly copy evaluation items are dropped before clustering, and nothing
else; the manifest says what was dropped against what and is checked when read back."""

import collections
import json
import re
import warnings

import datasets
import numpy as np
import pytest

from helpers import make_pool, make_trainer, unit_rows
from hf_idsel import diverse_select, load_selection
from hf_idsel import pool as builtin
from hf_idsel.decontaminate import DecontaminationSettings, decontaminate, ngram_overlap, ngrams
from hf_idsel.errors import InvalidArgumentError
from hf_idsel.manifest import Manifest
from hf_idsel.render import resolve_render_options

needs_pool = pytest.mark.skipif(not builtin.builtin_pool_available()[0], reason="the built-in pool's packages are missing")
# The pool leaves out 100 GSM8K and 20 HumanEval rows, so that both benchmarks have items the pool does not hold.
POOL_ROWS = {"gsm8k": 1219, "humaneval": 144}


def held_out(pool, source: str, count: int, seed: int = 1) -> list[list[dict]]:
    """`count` rows of `source` that the pool does not hold: evaluation items, in the pool's message layout."""
    used = set(pool["origin_id"])
    rows = [m for origin, m in builtin.source_rows(source) if origin not in used]
    picked = np.random.default_rng(seed).choice(len(rows), size=count, replace=False)
    return [rows[i] for i in sorted(picked)]


def reformat(text: str, rng) -> str:
    """The same words: whitespace collapsed, case changed, punctuation dropped."""
    text = re.sub(r"[?.,;:!()\"']", "", " ".join(text.split()))
    return text.upper() if rng.random() < 0.5 else text.lower()


def reword(text: str, rng, changed: int) -> str:
    """`changed` words replaced, then reformatted."""
    words = text.split()
    for i in rng.choice(len(words), size=min(changed, len(words)), replace=False):
        words[i] = "something"
    return reformat(" ".join(words), rng)


def evaluation_set(items: list[list[dict]]) -> datasets.Dataset:
    """Items as an evaluation harness holds them: question and answer columns (not the pool's layout)."""
    return datasets.Dataset.from_dict({"question": [m[0]["content"] for m in items], "answer": [m[1]["content"] for m in items]})


def plant(pool, copies: list[list[dict]]):
    """`pool` with `copies` appended as rows of its own layout; returns it and the planted rows' indices."""
    planted = datasets.Dataset.from_dict(
        {"messages": copies, "origin": ["planted"] * len(copies), "origin_id": [f"planted/{i}" for i in range(len(copies))]},
        features=pool.features,
    )
    return datasets.concatenate_datasets([pool, planted]), list(range(len(pool), len(pool) + len(copies)))


def as_pair(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


@needs_pool
def test_ngram_test_drops_copies_of_evaluation_items_and_no_row_of_the_builtin_pool():
    """On the whole built-in pool (3,863 rows here), with 320 held-out GSM8K, HumanEval and MMLU items: exact copies,
    reformatted copies (whitespace, case, punctuation) and, for GSM8K/HumanEval items of 80 words or more, copies with
    a word changed in the question and one in the answer are all dropped; no original row is. (Shorter reworded
    copies are the cosine test's: see the slow test below.)"""
    pool = builtin.load_builtin_pool(POOL_ROWS)
    gsm8k, humaneval, mmlu = held_out(pool, "gsm8k", 100), held_out(pool, "humaneval", 20), held_out(pool, "mmlu", 200)
    items = gsm8k + humaneval + mmlu
    rng = np.random.default_rng(0)
    copies = [as_pair(*(m["content"] for m in item)) for item in items[::5]]
    copies += [as_pair(*(reformat(m["content"], rng) for m in item)) for item in items[2::5]]
    long_items = [item for item in gsm8k + humaneval if sum(len(m["content"].split()) for m in item) >= 80]
    copies += [as_pair(*(reword(m["content"], rng, 1) for m in item)) for item in long_items[::3]]
    planted_pool, planted = plant(pool, copies)

    render = resolve_render_options(planted_pool.column_names)
    keep, record = decontaminate(
        planted_pool, evaluation_set(items), render, settings=DecontaminationSettings(cosine_threshold=None)
    )

    assert record["removed_indices"] == planted
    assert keep.sum() == len(pool) and not keep[planted].any()
    assert record["exclude"]["num_rows"] == len(items) and record["cosine"] == [None] * len(planted)
    assert min(record["ngram_overlap"]) >= 0.6


def test_template_ngrams_shared_by_many_items_match_no_row():
    template = "the following is a multiple choice question about"
    items = [f"{template} topic {i}: what is {i} plus {i} in the decimal system of numbers" for i in range(10)]
    pool_texts = [f"{template} history: who was the first emperor of rome and when did he rule", items[3]]
    overlap, best = ngram_overlap(pool_texts, items, n=8)
    assert overlap[0] == 0 and best[0] == -1  # only the template is shared
    assert overlap[1] == 1 and best[1] == 3
    assert ngrams("A, b!", 8) == {("a", "b")} and ngrams("", 8) == set()


def _vectors_pool(n=120, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    vectors = unit_rows(rng.normal(size=(n, dim)))
    texts = [f"row {i}: " + " ".join(f"w{(i * 7 + j) % 997}" for j in range(12)) for i in range(n)]
    return datasets.Dataset.from_dict({"text": texts, "embedding": vectors.tolist()}), vectors


def test_exclude_drops_rows_before_clustering_and_the_budget_counts_the_rows_left():
    pool, vectors = _vectors_pool()
    # Item 0 copies row 5's text; item 1 is a new text whose vector is row 17's, slightly moved (cosine > 0.99).
    near = unit_rows(vectors[17:18] + 0.01)
    exclude = datasets.Dataset.from_dict(
        {"text": [pool[5]["text"].upper(), "an evaluation item in other words"], "embedding": [vectors[5].tolist(), near[0].tolist()]}
    )
    subset, manifest = diverse_select(pool, 0.5, k=4, embedding_column="embedding", exclude_dataset=exclude, return_manifest=True)
    record = manifest.decontamination
    assert record["removed_indices"] == [5, 17] and record["matched_items"] == [0, 1]
    assert record["ngram_overlap"][0] == 1.0 and record["cosine"][1] >= 0.99
    recorded = {k: v for k, v in manifest.arguments.items() if k.startswith("exclude")}
    assert recorded == {"exclude_ngram": 8, "exclude_ngram_threshold": 0.6, "exclude_cosine_threshold": 0.99}
    assert len(subset) == 59  # half of the 118 rows left, exactly
    assert sum(manifest.cluster_sizes) == 118 and not {5, 17} & set(subset["source_index"])
    assert subset["text"] == [pool[i]["text"] for i in subset["source_index"]]

    # Read back: the rows, verified; a re-run needs the evaluation set and gives the same rows with it.
    again = Manifest.load(manifest.to_json())
    assert load_selection(again, pool)["source_index"] == subset["source_index"]
    with pytest.raises(InvalidArgumentError, match="pass that set again as `exclude_dataset=`"):
        load_selection(again, pool, recompute=True)
    assert load_selection(again, pool, recompute=True, exclude_dataset=exclude)["source_index"] == subset["source_index"]


def test_an_exclude_matching_nothing_leaves_the_selection_unchanged():
    pool, _ = _vectors_pool()
    exclude = datasets.Dataset.from_dict({"text": ["nothing like the pool at all"], "embedding": [[1.0] + [0.0] * 15]})
    plain, _ = diverse_select(pool, 30, k=4, embedding_column="embedding", return_manifest=True)
    excluded, manifest = diverse_select(pool, 30, k=4, embedding_column="embedding", exclude_dataset=exclude, return_manifest=True)
    assert manifest.decontamination["removed"] == 0
    assert excluded["source_index"] == plain["source_index"]


def test_balanced_random_draws_equal_shares_of_each_source_from_the_rows_left():
    """Issue 28.10: balanced random with `exclude` raised a TypeError (the sources were not taken on the rows left)."""
    pool, vectors = _vectors_pool()
    pool = pool.add_column("origin", [["forum", "wiki", "exams"][i % 3] for i in range(len(pool))])
    exclude = datasets.Dataset.from_dict({"text": [pool[5]["text"], pool[6]["text"]], "embedding": vectors[[5, 6]].tolist()})
    subset, manifest = diverse_select(
        pool, 30, method="balanced-random", source_column="origin", k=4, embedding_column="embedding", exclude_dataset=exclude,
        return_manifest=True,
    )
    assert manifest.decontamination["removed_indices"] == [5, 6] and not {5, 6} & set(subset["source_index"])
    assert sorted(collections.Counter(subset["origin"]).values()) == [10, 10, 10]
    assert subset["origin"] == [pool[i]["origin"] for i in subset["source_index"]]


def test_tampered_decontamination_records_are_refused():
    pool, vectors = _vectors_pool()
    exclude = datasets.Dataset.from_dict({"text": [pool[5]["text"]], "embedding": [vectors[5].tolist()]})
    _, manifest = diverse_select(pool, 30, k=4, embedding_column="embedding", exclude_dataset=exclude, return_manifest=True)
    data = json.loads(manifest.to_json())
    selected = data["selected_indices"][0]
    for edit, message in (
        (lambda d: d["decontamination"].update(removed_indices=[selected], removed=1), "a removed row was selected"),
        (lambda d: d["decontamination"].update(removed=2), "must count `removed_indices`"),
        (lambda d: d["decontamination"].update(removed_indices=[999], removed=1), "ascending rows of the 120-row pool"),
        (lambda d: d["decontamination"].update(cosine=[]), "one entry per removed row"),
        (lambda d: d.update(decontamination=None), "sum to `pool.num_rows`=120"),
        (lambda d: d.update(cluster_map=[[0.0, 1.0]]), "one \\[x, y\\] pair"),
    ):
        tampered = json.loads(json.dumps(data))
        edit(tampered)
        with pytest.raises(InvalidArgumentError, match=message):
            Manifest.from_dict(tampered)
    del data["decontamination"], data["cluster_map"]  # a manifest written before both
    data["cluster_sizes"][0] += 1
    assert Manifest.from_dict(data).decontamination is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(exclude_dataset=[]), "`exclude_dataset` must be a datasets.Dataset .* non-empty list"),
        (dict(exclude_dataset=42), "`exclude_dataset` must be a datasets.Dataset"),
        (dict(exclude_dataset=["x"], exclude_ngram=0), "exclude_ngram"),
        (dict(exclude_dataset=["x"], exclude_ngram_threshold=1.5), "exclude_ngram_threshold"),
        (dict(exclude_dataset=["x"], exclude_cosine_threshold=0), "exclude_cosine_threshold"),
        (dict(exclude_dataset=["x"], exclude_ngram_threshold=None, exclude_cosine_threshold=None), "nothing would be excluded"),
        (dict(exclude_dataset=["x"]), "lacks the vector column"),
        (dict(exclude_dataset=datasets.Dataset.from_dict({"label": [1]}), exclude_cosine_threshold=None), "Cannot find the text"),
    ],
)
def test_bad_exclude_arguments_are_named(kwargs, message):
    pool, _ = _vectors_pool()
    with pytest.raises(InvalidArgumentError, match=message):
        diverse_select(pool, 10, k=2, embedding_column="embedding", **kwargs)


def test_one_settings_object_checks_the_thresholds_and_is_what_the_manifest_records():
    """`diverse_select`, the trainer and the manifest's record share one `DecontaminationSettings`: its checks name
    the front doors' arguments, and the record holds its fields."""
    assert DecontaminationSettings() == DecontaminationSettings(8, 0.6, 0.99)
    assert DecontaminationSettings.from_arguments(exclude_ngram=np.int64(4)).ngram == 4  # numpy numbers made plain
    assert type(DecontaminationSettings.from_arguments(exclude_ngram=np.int64(4)).ngram) is int
    for kwargs, message in (
        (dict(ngram=0), r"`exclude_ngram`=0 must be an int >= 1"),
        (dict(ngram_threshold=1.5), r"`exclude_ngram_threshold`=1.5 must be a finite number in \(0, 1\]"),
        (dict(cosine_threshold="0.9"), r"`exclude_cosine_threshold`='0.9'"),
        (dict(ngram_threshold=None, cosine_threshold=None), "nothing would be excluded"),
    ):
        with pytest.raises(InvalidArgumentError, match=message):
            DecontaminationSettings(**kwargs)
    pool, vectors = _vectors_pool()
    exclude = datasets.Dataset.from_dict({"text": [pool[5]["text"]], "embedding": [vectors[5].tolist()]})
    _, manifest = diverse_select(
        pool, 30, k=4, embedding_column="embedding", exclude_dataset=exclude, exclude_ngram=5,
        exclude_cosine_threshold=None, return_manifest=True,
    )
    record = {key: manifest.decontamination[key] for key in ("ngram", "ngram_threshold", "cosine_threshold")}
    assert record == DecontaminationSettings(5, 0.6, None).to_record()
    recorded = {k: v for k, v in manifest.arguments.items() if k.startswith("exclude")}
    assert recorded == {"exclude_ngram": 5, "exclude_ngram_threshold": 0.6, "exclude_cosine_threshold": None}


def test_exclude_is_a_deprecated_name_of_exclude_dataset():
    pool, vectors = _vectors_pool()
    exclude = datasets.Dataset.from_dict({"text": [pool[5]["text"]], "embedding": [vectors[5].tolist()]})
    with pytest.warns(FutureWarning, match="`exclude` is deprecated .* now called `exclude_dataset`"):
        old, old_manifest = diverse_select(pool, 30, k=4, embedding_column="embedding", exclude=exclude, return_manifest=True)
    new, manifest = diverse_select(pool, 30, k=4, embedding_column="embedding", exclude_dataset=exclude, return_manifest=True)
    assert old["source_index"] == new["source_index"] and old_manifest.decontamination == manifest.decontamination
    other = datasets.Dataset.from_dict({"text": [pool[6]["text"]], "embedding": [vectors[6].tolist()]})
    with pytest.warns(FutureWarning), pytest.raises(InvalidArgumentError, match="`exclude`=.* and `exclude_dataset`=.* disagree"):
        diverse_select(pool, 30, k=4, embedding_column="embedding", exclude=exclude, exclude_dataset=other)
    # A replay takes the evaluation set by either name.
    with pytest.warns(FutureWarning, match="now called `exclude_dataset`"):
        again = load_selection(manifest, pool, recompute=True, exclude=exclude)
    assert again["source_index"] == new["source_index"]


def test_an_exclude_that_is_the_pool_is_refused():
    pool, _ = _vectors_pool(n=20)
    with pytest.raises(InvalidArgumentError, match="nothing is left to select"):
        diverse_select(pool, 5, k=2, embedding_column="embedding", exclude_dataset=pool)


def test_batch_size_is_a_deprecated_name_of_encode_batch_size():
    pool, _ = _vectors_pool(n=40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = diverse_select(pool, 10, k=2, embedding_column="embedding", batch_size=8)
    assert [w.category for w in caught] == [FutureWarning] and "encode_batch_size" in str(caught[0].message)
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert old["source_index"] == diverse_select(pool, 10, k=2, embedding_column="embedding", encode_batch_size=8)["source_index"]
    with pytest.warns(FutureWarning), pytest.raises(InvalidArgumentError, match="disagree"):
        diverse_select(pool, 10, k=2, embedding_column="embedding", batch_size=8, encode_batch_size=16)
    for name, value in (("encode_batch_size", 0), ("num_proc", 0), ("load_from_cache_file", "no"), ("keep_in_memory", 1)):
        with pytest.raises(InvalidArgumentError, match=name):
            diverse_select(pool, 10, k=2, embedding_column="embedding", **{name: value})


@pytest.mark.slow
@needs_pool
def test_the_real_encoder_drops_reworded_copies_and_no_row_of_the_builtin_pool(cache_dir):
    """The packaged MiniLM on a built-in pool of 600 rows: exact, reformatted and reworded copies (a word changed in
    the question, the answer reformatted) of held-out items are all dropped, by n-gram or cosine, and no original
    row; the budget is exact on the rows left."""
    pool = builtin.load_builtin_pool({"gsm8k": 150, "humaneval": 150, "chitchat": 150, "mmlu": 150})
    items = held_out(pool, "gsm8k", 20) + held_out(pool, "humaneval", 10) + held_out(pool, "mmlu", 30)
    rng = np.random.default_rng(0)
    copies = [as_pair(*(m["content"] for m in item)) for item in items[::3]]
    copies += [as_pair(*(reformat(m["content"], rng) for m in item)) for item in items[1::3]]
    copies += [as_pair(reword(item[0]["content"], rng, 1), reformat(item[1]["content"], rng)) for item in items[2::3]]
    planted_pool, planted = plant(pool, copies)

    subset, manifest = diverse_select(
        planted_pool, 100, k=8, exclude_dataset=evaluation_set(items), cache_dir=cache_dir, return_manifest=True
    )
    assert manifest.decontamination["removed_indices"] == planted
    assert len(subset) == 100 and not set(planted) & set(subset["source_index"])
    assert sum(manifest.cluster_sizes) == len(pool)


def test_the_trainer_never_draws_rows_that_copy_its_exclude_dataset(tmp_path):
    pool = make_pool()
    vectors = np.asarray(pool["embedding"])
    away = unit_rows(-vectors.mean(axis=0, keepdims=True))  # far from every row: only the n-gram test can match
    assert (vectors @ away.T).max() < 0.95
    # Two arithmetic rows ("What is 2 plus 2? It is 4."), each unique in the pool, as an evaluation set.
    exclude = pool.select([26, 33]).remove_columns(["embedding"]).add_column("embedding", away.tolist() * 2)
    trainer = make_trainer(tmp_path, pool=pool, budget=80, rounds=2, k="4", exclude_dataset=exclude)
    assert trainer.decontamination["removed_indices"] == [26, 33]
    assert not trainer.trainable[[26, 33]].any() and trainer.trainable.sum() == len(pool) - 2
    assert len(trainer.labels) == len(pool) and trainer.k == 4
    trainer.train()
    drawn = trainer.selection.selected()
    assert len(drawn) == 80 and not {26, 33} & set(np.asarray(drawn).tolist())
    with pytest.raises(InvalidArgumentError, match="left after decontamination"):
        make_trainer(tmp_path / "big", pool=pool, budget=95, rounds=2, k="4", exclude_dataset=exclude)


# --- Issue 29.2: `exclude_ngram` and the thresholds' boundaries, through diverse_select ---

# An evaluation item of 11 words no pool row holds otherwise: 10 distinct word 2-grams, 4 distinct 8-grams.
ITEM_WORDS = "zebra quartz lantern orbit maple cobalt fjord saffron tundra velvet harbor".split()
ITEM = " ".join(ITEM_WORDS)


def _planted_pool(texts: dict[int, str], vectors: dict[int, list[float]] | None = None, n: int = 40, dim: int = 16):
    """`n` rows of words of their own, the rows in `texts` given that text; every vector is orthogonal to the first
    axis (cosine 0 to an item on it) but those in `vectors`."""
    rng = np.random.default_rng(4)
    matrix = unit_rows(np.hstack([np.zeros((n, 1)), rng.normal(size=(n, dim - 1))]))
    for row, vector in (vectors or {}).items():
        matrix[row] = vector
    rows = [texts.get(i, f"row {i}: " + " ".join(f"w{i}x{j}" for j in range(10))) for i in range(n)]
    return datasets.Dataset.from_dict({"text": rows, "embedding": matrix.tolist()})


def _removed(pool, **kwargs):
    _, manifest = diverse_select(pool, 10, k=2, embedding_column="embedding", return_manifest=True, **kwargs)
    return manifest


def test_exclude_ngram_sets_the_word_ngram_length_of_the_overlap_test():
    """Row 7 holds the item's first 9 words: 8 of its 10 2-grams (0.8), but 2 of its 4 8-grams (0.5). With the
    default 8-grams it stays; with `exclude_ngram=2` it goes, and the manifest records the length used."""
    pool = _planted_pool({7: "row 7 says " + " ".join(ITEM_WORDS[:9]) + " and more"})
    common = dict(exclude=[ITEM], exclude_cosine_threshold=None)
    default = _removed(pool, **common)
    assert default.decontamination["removed_indices"] == [] and default.decontamination["ngram"] == 8
    two = _removed(pool, exclude_ngram=2, **common)
    assert two.decontamination["removed_indices"] == [7] and two.decontamination["ngram_overlap"] == [0.8]
    assert two.decontamination["ngram"] == 2 and two.arguments["exclude_ngram"] == 2
    assert 7 not in two.selected_indices


def _float32_above(value: float) -> float:
    """The next float32 above `value`: a threshold just above a share or cosine, whatever precision compares them."""
    return float(np.nextafter(np.float32(value), np.float32(2)))


def test_a_row_exactly_at_the_ngram_threshold_is_dropped_and_one_just_below_is_kept():
    """Rows 3 and 9 hold 6 and 5 of the item's 10 word 2-grams: shares of exactly 0.6 and 0.5. "At least the
    threshold" drops a row at it; a threshold just above a row's share keeps the row."""
    pool = _planted_pool({3: "row three " + " ".join(ITEM_WORDS[:7]), 9: "row nine " + " ".join(ITEM_WORDS[4:10])})
    common = dict(exclude=[ITEM], exclude_ngram=2, exclude_cosine_threshold=None)
    at = _removed(pool, exclude_ngram_threshold=0.6, **common).decontamination
    assert at["removed_indices"] == [3] and at["ngram_overlap"] == [0.6]
    assert _removed(pool, exclude_ngram_threshold=_float32_above(0.6), **common).decontamination["removed_indices"] == []
    both = _removed(pool, exclude_ngram_threshold=0.5, **common).decontamination
    assert both["removed_indices"] == [3, 9] and both["ngram_overlap"] == [0.6, 0.5]
    assert _removed(pool, exclude_ngram_threshold=_float32_above(0.5), **common).decontamination["removed_indices"] == [3]


def test_a_row_exactly_at_the_cosine_threshold_is_dropped_and_one_just_below_is_kept():
    """The item's vector is the first axis. Row 5's vector (0.5, 0.5, 0.5, 0.5, 0, ...) has a cosine of exactly 0.5 to
    it in any floating-point precision; row 12's (0.25, ...) about 0.25; every other row 0."""
    quarter = np.zeros(16)
    quarter[0], quarter[1] = 0.25, np.sqrt(1 - 0.25**2)
    pool = _planted_pool({}, {5: [0.5] * 4 + [0.0] * 12, 12: quarter.tolist()})
    axis = [1.0] + [0.0] * 15
    exclude = datasets.Dataset.from_dict({"text": ["an evaluation item in words of its own"], "embedding": [axis]})
    common = dict(exclude=exclude, exclude_ngram_threshold=None)
    at = _removed(pool, exclude_cosine_threshold=0.5, **common).decontamination
    assert at["removed_indices"] == [5] and at["cosine"] == [0.5] and at["matched_items"] == [0]
    assert _removed(pool, exclude_cosine_threshold=_float32_above(0.5), **common).decontamination["removed_indices"] == []
    assert _removed(pool, exclude_cosine_threshold=0.2, **common).decontamination["removed_indices"] == [5, 12]
