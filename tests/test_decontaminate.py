"""Decontamination: pool rows that copy or nearly copy evaluation items are dropped before clustering, and nothing
else; the manifest says what was dropped against what and is checked when read back."""

import collections
import json
import math
import os
import re
import subprocess
import sys
import unicodedata
import warnings

import datasets
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import assert_warned_at, examples, make_pool, make_trainer, unit_rows
from hf_idsel import decontaminate as decontamination
from hf_idsel import diverse_select, load_selection
from hf_idsel import pool as builtin
from hf_idsel.decontaminate import DecontaminationSettings, decontaminate, ngram_overlap, normalize, words
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


# Characters a copy can hold and still read the same: every format character (zero-width spaces and joiners, BOM,
# soft hyphen, bidi controls, tags), every combining mark, the Hangul fillers.
FORMAT_CHARACTERS = [chr(c) for c in [*range(0x20000), *range(0xE0000, 0xE1000)] if unicodedata.category(chr(c)) == "Cf"]
COMBINING_MARKS = [chr(c) for c in [*range(0x20000), *range(0xE0000, 0xE1000)] if unicodedata.category(chr(c))[0] == "M"]
INVISIBLE = [*FORMAT_CHARACTERS, *COMBINING_MARKS, "\u115f", "\u1160", "\u3164", "\uffa0"]


def widen(ch: str) -> str:
    """The full-width form of a printable ASCII character (U+3000 for a space)."""
    return "\u3000" if ch == " " else chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch


def unicode_noise(text: str, rng) -> str:
    """`text` as a copy that reads the same: invisible characters inserted at about 1 position in 6, printable ASCII
    widened to full width and case swapped, each with probability 1/3, accents decomposed (NFD)."""
    out = []
    for ch in unicodedata.normalize("NFD", text):
        if rng.random() < 1 / 3:
            ch = widen(ch)
        if rng.random() < 1 / 3:
            ch = ch.swapcase()
        out.append(ch)
        if rng.random() < 1 / 6:
            out.append(INVISIBLE[int(rng.integers(len(INVISIBLE)))])
    return "".join(out)


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
    reformatted copies (whitespace, case, punctuation), copies with Unicode noise (invisible characters, full-width
    forms, decomposed accents) and, for GSM8K/HumanEval items of 80 words or more, copies with a word changed in the
    question and one in the answer are all dropped; no original row is. (Shorter reworded copies are the cosine
    test's: see the slow test below.)"""
    pool = builtin.load_builtin_pool(POOL_ROWS)
    gsm8k, humaneval, mmlu = held_out(pool, "gsm8k", 100), held_out(pool, "humaneval", 20), held_out(pool, "mmlu", 200)
    items = gsm8k + humaneval + mmlu
    rng = np.random.default_rng(0)
    copies = [as_pair(*(m["content"] for m in item)) for item in items[::5]]
    copies += [as_pair(*(reformat(m["content"], rng) for m in item)) for item in items[2::5]]
    copies += [as_pair(*(unicode_noise(m["content"], rng) for m in item)) for item in items[4::5]]
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
    assert words("A, b!") == ["a", "b"] and words("") == []


def _random_rows(count: int, length: int, seed: int) -> list[str]:
    """`count` texts of `length` words drawn from 5,000 made-up words: rows that share no 8-gram by chance."""
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{j}" for j in rng.integers(0, 5000, size=length)) for _ in range(count)]


@pytest.mark.parametrize("copies", [8, 9, 100])
def test_an_item_copied_into_many_rows_is_dropped_from_every_one(copies):
    """Issue 28.3: pool copies counted towards the template rule, so an item copied into 8 rows of a 200-row pool was
    dropped from all 8 and one copied into 9 from none (the most contaminated items escaped). Templates are now the
    evaluation items' alone: 8, 9 or 100 copies (half the pool) are all dropped, and nothing else."""
    items = _random_rows(10, 40, seed=1)
    pool_texts = _random_rows(200, 40, seed=2)
    rows = list(range(0, 200, 200 // copies))[:copies]
    for row in rows:
        pool_texts[row] = f"Seen online: {items[4].upper()}. End of the post."
    pool = datasets.Dataset.from_dict({"text": pool_texts})
    keep, record = decontaminate(pool, items, resolve_render_options(pool.column_names), settings=DecontaminationSettings(cosine_threshold=None))
    assert record["removed_indices"] == rows and record["matched_items"] == [4] * copies
    assert record["ngram_overlap"] == [1.0] * copies and keep.sum() == 200 - copies


@pytest.mark.parametrize(
    "item, copy",
    [
        ("What is the capital city of the state of Texas in 2020?", "What\u200b is the capi\u200dtal\u00ad city of the state of Te\u200cxas in 2020?"),
        ("What is the capital city of the state of Texas in 2020?", "\ufeffＷｈａｔ　ｉｓ　ｔｈｅ capital city OF THE STATE of Texas ｉｎ　２０２０？"),
        ("The café served crème brûlée to the naïve critic on Sunday", "THE CAFE\u0301 SERVED CRE\u0300ME BRU\u0302LE\u0301E TO THE NAI\u0308VE CRITIC ON SUNDAY"),
        ("The café served crème brûlée to the naïve critic on Sunday", "The cafe served creme brulee to the naive critic on Sunday"),
        ("Die Straße war sehr lang und der Weg zum Ziel war weit", "DIE STRASSE WAR SEHR LANG UND DER WEG ZUM ZIEL WAR WEIT"),
        ("The first official file was filed in the office of finance", "The ﬁrst oﬃcial ﬁle was ﬁled in the oﬃce of ﬁnance"),
        ("x squared plus y squared equals r squared for every point", "x\u3164 squared plus y squared eq\u115fuals r squared for every point"),
    ],
    ids=["zero-width", "full-width", "decomposed-accents", "accents-dropped", "case-folding", "ligatures", "hangul-fillers"],
)
def test_unicode_variants_of_an_item_do_not_hide_a_copy(item, copy):
    """Issue 28.3: zero-width characters and full-width forms hid a verbatim copy. Text is now read after NFKC, case
    folding, and with format characters, combining marks and blank fillers deleted."""
    assert words(copy) == words(item)
    pool_texts = _random_rows(20, 30, seed=3)
    pool_texts[7] = f"{pool_texts[7]} {copy} {pool_texts[8]}"
    overlap, best = ngram_overlap(pool_texts, [*_random_rows(3, 30, seed=4), item])
    assert overlap[7] == 1.0 and best[7] == 3
    assert np.flatnonzero(overlap > 0).tolist() == [7]


def test_normalize_folds_width_case_accents_and_invisible_characters():
    assert normalize("Ｈｅｌｌｏ\u200b Ｗｏｒｌｄ") == "hello world"
    assert normalize("İstanbul ǅemal Σίσυφος ΐ") == normalize("istanbul džemal σισυφοσ ι")
    assert words("x² + y² = 3.5, don't") == ["x2", "y2", "35", "dont"]
    assert words("\u200b\u200d\ufeff\u00ad") == [] and words("ａ\u3000ｂ") == ["a", "b"]


def test_short_items_are_found_inside_rows_from_five_words():
    """Issue 28.3: an item shorter than n words was one n-gram that no longer row could hold. From
    `SHORT_ITEM_MIN_WORDS` (5) words it is found inside a row; a shorter one only in a row that is exactly its words,
    so that "What is 2+2?" does not drop every row asking what something is."""
    assert decontamination.SHORT_ITEM_MIN_WORDS == 5
    items = ["Who wrote the novel Moby Dick?", "Name the largest planet, please.", "What is 2+2?", "Hello"]
    pool_texts = [
        "Quiz night. Who wrote the novel MOBY DICK? Herman Melville did, in 1851.",  # 0: item 0 inside
        "Teacher: name the largest planet please! Student: Jupiter.",  # 1: item 1 inside
        "What is 2+2? It is 4.",  # 2: item 2 inside a longer row: too short to count
        "WHAT is 2+2!!",  # 3: exactly item 2's words
        "Hello there, how are you?",  # 4: item 3 inside
        "HELLO!",  # 5: exactly item 3
        "Who wrote the novel Dracula? Bram Stoker.",  # 6: part of item 0 only
    ]
    overlap, best = ngram_overlap(pool_texts, items)
    assert overlap.tolist() == [1, 1, 0, 1, 0, 1, 0]
    assert best[[0, 1, 3, 5]].tolist() == [0, 1, 2, 3]
    # Punctuation is deleted, not a word boundary: "2 + 2" is two words, "2+2" one, "Moby-Dick" one.
    assert words("What is 2+2?") == ["what", "is", "22"] and ngram_overlap(["what is 2 + 2"], items)[0].tolist() == [0]
    assert ngram_overlap(["Who wrote the novel Moby-Dick?"], items)[0].tolist() == [0]
    # With 4-grams an item of 4 words or more is n-grams again.
    assert ngram_overlap(["He asked: who wrote the novel Moby Dick first?"], items, n=4)[0].tolist() == [1]


def _multiple_choice(topic: str, question: str, options: list[str]) -> str:
    return (
        f"The following is a multiple-choice question about {topic}.\n\n{question}\n\n"
        + "\n".join(f"{x}. {o}" for x, o in zip("ABCD", options))
        + "\n\nAnswer with the letter of the correct option."
    )


def test_templates_are_decided_by_the_evaluation_items():
    """An instruction line that many MMLU-style items share is a template: a pool row with it and another question is
    not dropped, a copy of an item is. A lone item has no templates: the same row then shares some of its n-grams.
    Two items that are copies of each other still match their copies (an item made only of templates keeps all its
    n-grams)."""
    questions = _random_rows(20, 14, seed=5)
    options = [_random_rows(4, 2, seed=6 + i) for i in range(20)]
    items = [_multiple_choice("world history", questions[i], options[i]) for i in range(20)]
    other = _multiple_choice("world history", "Which empire built the longest road network of the ancient world?", ["Rome", "Inca", "Persia", "Han"])
    pool_texts = [other, f"Practice set: {items[11]}"]
    overlap, best = ngram_overlap(pool_texts, items)
    assert overlap.tolist() == [0, 1] and best.tolist() == [-1, 11]
    lone, _ = ngram_overlap(pool_texts, items[11:12])
    assert 0 < lone[0] < 0.6 and lone[1] == 1
    # Item 0's n-grams are all in item 1 (item 2 is item 0 again, counted once): all templates, all counted.
    twins = [items[3], items[3] + " Explain your answer.", items[3].upper()]
    overlap, best = ngram_overlap([items[3], twins[1], items[5]], twins)
    assert overlap[:2].tolist() == [1, 1] and best[:2].tolist() == [0, 0]  # a tie goes to the lowest item
    assert 0 < overlap[2] < 0.6  # another question with the instruction line, which counts for item 0 now


def test_the_pool_is_read_in_blocks_from_a_generator(monkeypatch):
    items = _random_rows(30, 20, seed=7)
    pool_texts = _random_rows(50, 25, seed=8)
    for row in range(0, 50, 6):
        pool_texts[row] += " " + items[row % 30]
    whole = ngram_overlap(pool_texts, items)
    monkeypatch.setattr(decontamination, "_CHUNK_ROWS", 7)
    blocks = ngram_overlap((text for text in pool_texts), items, total=len(pool_texts))
    assert np.array_equal(whole[0], blocks[0]) and np.array_equal(whole[1], blocks[1])
    assert (whole[0][::6] == 1).all()
    assert [len(a) for a in ngram_overlap(iter([]), items)] == [0, 0]


def reference_overlap(pool_texts: list[str], exclude_texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n-gram test written the slow, plain way: Python sets of word tuples, one (row, item) pair at a time."""

    def grams(tokens):
        if len(tokens) >= n:
            return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}
        return {tuple(tokens)} if tokens else set()

    items = [words(text) for text in exclude_texts]
    distinct = {tuple(tokens) for tokens in items}
    holders = collections.Counter(gram for tokens in distinct for gram in grams(list(tokens)))
    limit = max(decontamination.TEMPLATE_MIN_ITEMS, math.ceil(decontamination.TEMPLATE_ITEM_SHARE * len(distinct)))
    counted = [{g for g in grams(tokens) if holders[g] < limit} or grams(tokens) for tokens in items]
    overlap, best = np.zeros(len(pool_texts)), np.full(len(pool_texts), -1)
    for row, text in enumerate(pool_texts):
        tokens = words(text)
        row_grams = grams(tokens) if len(tokens) >= n else set()
        for item, item_tokens in enumerate(items):
            if not counted[item]:
                continue
            if len(item_tokens) >= n:
                share = len(counted[item] & row_grams) / len(counted[item])
            elif len(item_tokens) >= decontamination.SHORT_ITEM_MIN_WORDS:
                size = len(item_tokens)
                share = float(any(tokens[i : i + size] == item_tokens for i in range(len(tokens) - size + 1)))
            else:
                share = float(tokens == item_tokens)
            if share > overlap[row]:
                overlap[row], best[row] = share, item
    return overlap, best


VOCABULARY = ["a", "b", "c", "d", "B", "c!", "(d)", "café", "cafe\u0301", "ｄ"]
texts = st.lists(st.sampled_from(VOCABULARY), max_size=14).map(" ".join)


@settings(max_examples=examples(300))
@given(
    n=st.integers(1, 9), items=st.lists(texts, min_size=1, max_size=12), pool=st.lists(texts, min_size=1, max_size=10),
    copies=st.lists(st.tuples(st.integers(0, 100), st.integers(0, 100)), max_size=4),
)
def test_the_vectorised_test_equals_the_reference(n, items, pool, copies):
    """On random small inputs (a vocabulary of a few words, so that n-grams repeat, templates form and items are
    short), the hashed, block-wise test gives exactly the slow reference's shares and items, ties included."""
    for row, item in copies:  # some rows hold a copy of an item
        pool[row % len(pool)] += " " + items[item % len(items)]
    overlap, best = ngram_overlap(pool, items, n)
    expected_overlap, expected_best = reference_overlap(pool, items, n)
    assert overlap.tolist() == expected_overlap.tolist() and best.tolist() == expected_best.tolist()


WORDS = ["the", "cat", "sat", "on", "mat", "café", "straße", "naïve", "ωmega", "x2", "don't", "3.5", "fin", "ﬁn"]
noise = st.lists(st.tuples(st.integers(0, 3), st.sampled_from(INVISIBLE)), max_size=400)


@settings(max_examples=examples(200))
@given(
    items=st.lists(st.lists(st.sampled_from(WORDS), min_size=5, max_size=20).map(" ".join), min_size=1, max_size=8),
    pool=st.lists(st.lists(st.sampled_from(WORDS), max_size=20).map(" ".join), min_size=1, max_size=6),
    which=st.tuples(st.integers(0, 100), st.integers(0, 100)), noise=noise, n=st.sampled_from([3, 8, 13]),
)
def test_a_verbatim_copy_with_unicode_noise_is_always_caught(items, pool, which, noise, n):
    """Whatever the items (sharing templates, shorter than n), a verbatim copy of one of at least 5 words, set in a row
    with invisible characters inserted, characters widened and case changed, reaches a share of 1."""
    item, row = which[0] % len(items), which[1] % len(pool)
    copy, marks = [], iter(noise)
    for ch in items[item]:
        action, invisible = next(marks, (0, ""))
        copy.append((widen(ch) if action == 1 else ch.swapcase() if action == 2 else ch) + invisible)
    pool[row] = f"{pool[row]} {''.join(copy)} {pool[(row + 1) % len(pool)]}"
    overlap, _ = ngram_overlap(pool, items, n)
    assert overlap[row] == 1.0


@settings(max_examples=examples(200))
@given(st.text())
def test_normalising_twice_changes_nothing(text):
    assert normalize(normalize(text)) == normalize(text)
    assert words(" ".join(words(text))) == words(text)
    if text.isascii():  # the fast path reads ASCII as the general one does
        assert words(text) == re.sub(r"[^\w\s]", "", text.lower()).split()


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
    assert_warned_at(caught[0], __file__)
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


@pytest.mark.scripts
@needs_pool
def test_the_scale_benchmark_finds_every_planted_copy(tmp_path):
    """`bench/decontaminate.py --quick`: both implementations run in their own processes and report time and memory;
    the new one finds every planted copy, those with Unicode noise included, which the old one missed."""
    bench = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench", "decontaminate.py")
    out = tmp_path / "scale.json"
    done = subprocess.run([sys.executable, bench, "--quick", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {(r["implementation"], r["pool_rows"]): r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {(i, size) for i in ("before", "after") for size in (2000, 5000)}
    for size in (2000, 5000):
        after, before = runs["after", size], runs["before", size]
        assert after["planted_found"] == after["planted"] == 100 and before["planted_found_unicode_noise"] < 50
        assert after["wall_s"] > 0 and after["cpu_s"] > 0 and after["peak_rss_mib"] >= after["rss_before_call_mib"] > 0


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
