import dataclasses

import datasets
import numpy as np
import pytest

from helpers import assert_warned_at
import hf_idsel
from hf_idsel import InvalidArgumentError, diverse_select
from hf_idsel.methods import METHODS, Method
from hf_idsel.sample import cluster_quotas
from hf_idsel.arguments import SelectArguments


def select(pool, budget, **kwargs):
    kwargs.setdefault("embedding_column", "embedding")
    kwargs.setdefault("k", 6)
    return diverse_select(pool, budget, **kwargs)


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("budget, rows", [(37, 37), (0.2, 50), (250, 250)])
def test_exact_budget_every_method(blob_pool, method, budget, rows):
    kwargs = {"deita": {"quality_column": "quality"}, "balanced-random": {"source_column": "blob"}}.get(method, {})
    subset = select(blob_pool, budget, method=method, **kwargs)
    assert len(subset) == rows
    assert len(set(subset["source_index"])) == rows


def test_subset_keeps_columns_and_points_at_pool_rows(blob_pool):
    subset = select(blob_pool, 40)
    assert subset.column_names == blob_pool.column_names + ["source_index", "cluster"]
    for row in subset:
        original = blob_pool[row["source_index"]]
        assert {k: row[k] for k in blob_pool.column_names} == original
    assert subset["source_index"] == sorted(subset["source_index"])


def test_same_seed_same_rows_different_seed_differs(blob_pool):
    for method in ("kmq", "random", "kcenter"):
        a = select(blob_pool, 30, method=method, seed=1)["source_index"]
        assert a == select(blob_pool, 30, method=method, seed=1)["source_index"]
        assert a != select(blob_pool, 30, method=method, seed=2)["source_index"]


def test_kmq_quotas_within_one_of_cluster_share(blob_pool):
    _, manifest = select(blob_pool, 50, return_manifest=True)
    sizes = np.array(manifest.cluster_sizes)
    chosen = np.array(manifest.selected_per_cluster)
    assert chosen.sum() == 50
    assert (np.abs(chosen - 50 * sizes / sizes.sum()) < 1).all()
    assert chosen.tolist() == cluster_quotas(sizes, 50).tolist()


def test_planted_clusters_are_found_and_cover_the_subset(blob_pool):
    subset = select(blob_pool, 14, k="auto")  # k="auto" keeps k below half the budget: 14 rows allow k = 6
    blobs = np.array(subset["blob"])
    assert set(blobs) == set(range(6))  # every planted cluster contributes
    # cluster ids agree with the planted blobs one to one
    pairs = set(zip(subset["cluster"], subset["blob"]))
    assert len(pairs) == len({c for c, _ in pairs}) == len({b for _, b in pairs})


def test_auto_k_recovers_planted_count_and_reports_scores(blob_pool):
    _, manifest = select(blob_pool, 20, k="auto", return_manifest=True)
    assert manifest.k == 6
    assert manifest.k_selection["mode"] == "auto"
    assert max(manifest.k_selection["silhouette"].items(), key=lambda kv: kv[1])[0] == "6"


def test_quality_column_shifts_the_draw(blob_pool):
    quality = np.array(blob_pool["quality"])
    plain = [quality[select(blob_pool, 40, seed=s)["source_index"]].mean() for s in range(10)]
    scored = [
        quality[select(blob_pool, 40, seed=s, quality_column="quality", quality_temperature=0.3)["source_index"]].mean()
        for s in range(10)
    ]
    assert np.mean(scored) > np.mean(plain) + 0.5


def test_manifest_records_the_arguments_that_decide_the_rows(blob_pool, cache_dir):
    _, manifest = select(
        blob_pool, 20, return_manifest=True, cache_dir=cache_dir, encode_batch_size=8, k_candidates=[2, 3],
        desc="Pool", load_from_cache_file=False, keep_in_memory=True, num_proc=2,
    )
    # Machine-local settings (cache_dir, encode_batch_size, device, the map settings) and objects (tokenizer) are not
    # recorded; nor are the decontamination thresholds without `exclude`.
    assert manifest.arguments == {
        "budget": 20,
        "method": "kmq",
        "k": 6,
        "seed": 0,
        "max_tokens": None,
        "quality_column": None,
        "source_column": None,
        "quality_temperature": 1.0,
        "quality_weighting": "softmax",
        "quota": "proportional",
        "encoder": "sentence-transformers/all-MiniLM-L6-v2",
        "encoder_revision": None,
        "embedding_column": "embedding",
        "format": None,
        "text_column": None,
        "template": None,
        "embed_answer": True,
        "dedup_threshold": None,
        "deita_threshold": 0.9,
        "qdit_alpha": 0.5,
        "k_candidates": [2, 3],
        "kmeans_niter": 20,
        "trust_remote_code": False,
    }


def test_dataset_method_and_dataset_dict(blob_pool):
    subset = blob_pool.diverse_select(25, embedding_column="embedding", k=6)
    assert len(subset) == 25
    assert subset["source_index"] == select(blob_pool, 25)["source_index"]
    dd = datasets.DatasetDict({"train": blob_pool, "test": blob_pool.select(range(100))})
    both = dd.diverse_select(0.1, embedding_column="embedding", k=3)
    assert len(both["train"]) == 25 and len(both["test"]) == 10
    only = diverse_select(dd, 0.1, split="train", embedding_column="embedding", k=3)
    assert len(only["train"]) == 25 and len(only["test"]) == 100 and "source_index" not in only["test"].column_names
    with pytest.raises(InvalidArgumentError, match="split"):
        diverse_select(dd, 0.1, split="validation", embedding_column="embedding")


def test_method_conflict_is_refused(monkeypatch):
    monkeypatch.setattr(datasets.Dataset, "diverse_select", lambda self: None, raising=False)
    with pytest.raises(hf_idsel.MethodConflictError, match="already defined"):
        hf_idsel.install_dataset_method()


def test_selection_of_a_shuffled_view_uses_its_row_order(blob_pool):
    view = blob_pool.shuffle(seed=3).select(range(120))
    subset = select(view, 15, k=3)
    for row in subset:
        assert row["text"] == view[row["source_index"]]["text"]


def test_dedup_drops_near_duplicates(blob_pool):
    doubled = datasets.concatenate_datasets([blob_pool, blob_pool])
    subset, manifest = select(doubled, 150, dedup_threshold=0.999, return_manifest=True)
    assert manifest.dedup["removed"] == len(blob_pool)
    assert len(set(subset["text"])) == 150
    with pytest.raises(InvalidArgumentError, match="de-duplication"):
        select(doubled, 300, dedup_threshold=0.999)


def test_all_identical_rows_still_give_an_exact_budget():
    pool = datasets.Dataset.from_dict({"embedding": [[1.0, 0.0, 0.0]] * 40, "text": ["same"] * 40})
    for method in ("kmq", "kmeans-closest", "kcenter", "qdit"):
        assert len(select(pool, 13, k=4, method=method)) == 13


@pytest.fixture
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from hf_idsel.embed import encoder_identity

    return AutoTokenizer.from_pretrained(encoder_identity("sentence-transformers/all-MiniLM-L6-v2").location)


def test_token_budget(blob_pool, minilm_tokenizer):
    tokenizer = minilm_tokenizer
    lengths = np.array([len(tokenizer(t)["input_ids"]) for t in blob_pool["text"]])
    subset, manifest = select(blob_pool, None, max_tokens=300, tokenizer=tokenizer, return_manifest=True)
    used = lengths[subset["source_index"]].sum()
    assert used == manifest.budget["tokens"] <= 300
    assert used + lengths.min() > 300 - lengths.max()  # filled up to within one row
    with pytest.raises(InvalidArgumentError, match="tokenizer"):
        select(blob_pool, None, max_tokens=300)
    with pytest.raises(InvalidArgumentError, match="max_tokens"):
        select(blob_pool, None, max_tokens=300, tokenizer=tokenizer, method="kcenter")


def test_a_method_added_to_the_table_runs_end_to_end(blob_pool, minilm_tokenizer, monkeypatch):
    def eligible_rows(inputs):
        return np.arange(len(inputs.embeddings)) if inputs.eligible is None else np.flatnonzero(inputs.eligible)

    def top_quality(inputs, rows, *, quality_temperature):
        assert quality_temperature == 0.5  # a declared option arrives by name
        return np.sort(np.argsort(-inputs.quality, kind="stable")[:rows])

    def needs_quality(args):
        if args.quality_column is None:
            raise InvalidArgumentError("method='top-quality' ranks rows by quality: pass `quality_column=`.")

    monkeypatch.setitem(
        METHODS, "first-n", Method(draw=lambda inputs, rows: eligible_rows(inputs)[:rows], order=eligible_rows)
    )
    monkeypatch.setitem(
        METHODS,
        "top-quality",
        Method(draw=top_quality, options=("quality_column", "quality_temperature"), check=needs_quality),
    )

    subset, manifest = select(blob_pool, 37, method="first-n", return_manifest=True)
    assert subset["source_index"] == list(range(37))
    assert manifest.method == manifest.arguments["method"] == "first-n"
    assert manifest.budget == {"requested": 37, "rows": 37}
    assert sum(manifest.selected_per_cluster) == 37

    # With an order, a token budget keeps the longest prefix that fits.
    lengths = np.array([len(minilm_tokenizer(t)["input_ids"]) for t in blob_pool["text"]])
    fits = int(np.searchsorted(np.cumsum(lengths), 300, side="right"))
    subset, manifest = select(
        blob_pool, None, max_tokens=300, tokenizer=minilm_tokenizer, method="first-n", return_manifest=True
    )
    assert subset["source_index"] == list(range(fits))
    assert manifest.budget["tokens"] == lengths[:fits].sum() <= 300 and manifest.budget["rows"] == fits

    quality = np.array(blob_pool["quality"])
    subset = select(blob_pool, 10, method="top-quality", quality_column="quality", quality_temperature=0.5)
    assert sorted(subset["source_index"]) == sorted(np.argsort(-quality)[:10].tolist())
    with pytest.raises(InvalidArgumentError, match="quality_column"):
        select(blob_pool, 10, method="top-quality")
    # Without an order, a token budget is refused, naming the methods that have one.
    with pytest.raises(InvalidArgumentError, match="first-n"):
        select(
            blob_pool, None, max_tokens=300, tokenizer=minilm_tokenizer, method="top-quality", quality_column="quality"
        )


def test_method_options_are_diverse_select_arguments():
    names = {field.name for field in dataclasses.fields(SelectArguments)}
    for method in METHODS.values():
        assert set(method.options) <= names


def test_dry_run_computes_nothing(blob_pool, cache_dir):
    text_pool = blob_pool.remove_columns("embedding")
    # An encoder that is nowhere on this machine: a dry run must not try to load it.
    plan = diverse_select(text_pool, 10, dry_run=True, encoder="nobody/not-a-cached-encoder", cache_dir=cache_dir)
    assert isinstance(plan, hf_idsel.SelectionPlan)
    assert plan.pool_rows == 250 and plan.budget_rows == 10 and plan.k == "auto"
    assert not plan.embeddings_cached and plan.estimated_embedding_seconds > 0
    assert "250" in str(plan)
    # A local path that does not exist is a mistake the plan can already name.
    with pytest.raises(InvalidArgumentError, match=r"`encoder`='/nonexistent/encoder' looks like a local path"):
        diverse_select(text_pool, 10, dry_run=True, encoder="/nonexistent/encoder", cache_dir=cache_dir)


# --- bad input: a clear error naming the argument, before any encoder is loaded ---

MISSING_ENCODER = "/nonexistent/encoder"


@pytest.mark.parametrize(
    "pool, kwargs, match",
    [
        ({"text": []}, {"budget": 1}, "empty"),
        ({"text": ["a", "b"]}, {"budget": 0}, "budget"),
        ({"text": ["a", "b"]}, {"budget": -1}, "budget"),
        ({"text": ["a", "b"]}, {"budget": 3}, "budget"),
        ({"text": ["a", "b"]}, {"budget": 1.5}, "budget"),
        ({"text": ["a", "b"]}, {"budget": 1, "k": 0}, "`k`"),
        ({"text": ["a", "b"]}, {"budget": 1, "k": 3}, "`k`"),
        ({"body": ["a", "b"]}, {"budget": 1}, "text_column"),
        ({"text": ["a", None]}, {"budget": 1}, "None"),
        ({"text": [1, 2]}, {"budget": 1}, "not text"),
        ({"text": ["a", "b"], "q": [1.0, float("nan")]}, {"budget": 1, "quality_column": "q"}, "quality_column"),
        ({"text": ["a", "b"], "q": [1.0, None]}, {"budget": 1, "quality_column": "q"}, "quality_column"),
        ({"text": ["a", "b"], "q": [1.0, -2.0]}, {"budget": 1, "quality_column": "q", "quality_weighting": "linear"}, "negative"),
        ({"text": ["a", "b"]}, {"budget": 1, "quality_column": "q"}, "quality_column"),
        ({"text": ["a", "b"]}, {"budget": 1, "method": "best"}, "method"),
        ({"text": ["a", "b"]}, {"budget": 1, "method": "deita"}, "quality_column"),
        ({"text": ["a", "b"], "source_index": [0, 1]}, {"budget": 1}, "source_index"),
        ({"messages": [[{"role": "user", "content": None}]]}, {"budget": 1}, "None"),
        ({"messages": [[{"role": "user", "content": "a"}, {"role": "assistant", "content": None}]]}, {"budget": 1}, "None"),
        ({"messages": [[{"role": "user", "content": "a"}], []]}, {"budget": 1}, "empty conversation"),
        ({"messages": [[]]}, {"budget": 1}, "empty conversations"),
    ],
)
def test_bad_input_fails_before_the_encoder(pool, kwargs, match):
    ds = datasets.Dataset.from_dict(pool) if pool.get("text") != [] else datasets.Dataset.from_dict({"text": []}, features=datasets.Features({"text": datasets.Value("string")}))
    kwargs = dict(kwargs)  # the parameters are shared: a second run of the test (mutmut's) must see them whole
    budget = kwargs.pop("budget")
    with pytest.raises(InvalidArgumentError, match=match):
        diverse_select(ds, budget, encoder=MISSING_ENCODER, k=kwargs.pop("k", 1), **kwargs)


def test_bad_embedding_column():
    wrong_dim = datasets.Dataset.from_dict({"embedding": [[1.0, 0.0], [0.0, 1.0, 0.0]]})
    with pytest.raises(InvalidArgumentError, match="dimension"):
        diverse_select(wrong_dim, 1, embedding_column="embedding", k=1)
    nan = datasets.Dataset.from_dict({"embedding": [[1.0, 0.0], [float("nan"), 1.0]]})
    with pytest.raises(InvalidArgumentError, match="NaN"):
        diverse_select(nan, 1, embedding_column="embedding", k=1)
    with pytest.raises(InvalidArgumentError, match="embedding_column"):
        diverse_select(nan, 1, embedding_column="vectors", k=1)


def test_budget_larger_than_pool_fraction_rounding(blob_pool):
    with pytest.raises(InvalidArgumentError, match="0 rows"):
        select(blob_pool, 0.001)


@pytest.mark.slow
def test_real_minilm_on_the_builtin_pool(cache_dir, caplog):
    import collections
    import logging

    pool = hf_idsel.load_builtin_pool({"gsm8k": 100, "humaneval": 60, "chitchat": 100, "mmlu": 100})
    subset, manifest = diverse_select(pool, 72, k=8, cache_dir=cache_dir, return_manifest=True)
    assert len(subset) == 72 and manifest.encoder["id"] == "sentence-transformers/all-MiniLM-L6-v2"
    # The real encoder separates the domains: each cluster's chosen rows come mostly from one source.
    by_cluster = collections.defaultdict(list)
    for cluster, origin in zip(subset["cluster"], subset["origin"]):
        by_cluster[cluster].append(origin)
    majority = sum(collections.Counter(v).most_common(1)[0][1] for v in by_cluster.values())
    assert majority / len(subset) > 0.85
    # Size-proportional quotas keep the pool's domain mix (100/60/100/100 of 360 -> 20/12/20/20).
    counts = collections.Counter(subset["origin"])
    for origin, expected in {"gsm8k": 20, "humaneval": 12, "chitchat": 20, "mmlu": 20}.items():
        assert abs(counts[origin] - expected) <= 3
    with caplog.at_level(logging.INFO, logger="hf_idsel"):
        again = diverse_select(pool, 72, k=8, cache_dir=cache_dir)
    assert "Loaded embeddings from cache" in caplog.text
    assert again["source_index"] == subset["source_index"]


def test_map_settings_mean_what_they_mean_in_datasets(blob_pool, minilm_tokenizer, cache_dir):
    """keep_in_memory writes no cache file, num_proc counts tokens in processes with the same result,
    load_from_cache_file=False recomputes and rewrites the cache, the default reads it."""
    import glob
    import os

    def token_files():
        return glob.glob(os.path.join(cache_dir, "tokens-*.arrow"))

    kwargs = dict(max_tokens=300, tokenizer=minilm_tokenizer, cache_dir=cache_dir, return_manifest=True)
    _, in_memory = select(blob_pool, None, keep_in_memory=True, **kwargs)
    assert token_files() == []
    _, processes = select(blob_pool, None, num_proc=2, desc="Pool", **kwargs)
    (path,) = token_files()
    assert (processes.selected_indices, processes.budget) == (in_memory.selected_indices, in_memory.budget)
    os.utime(path, ns=(0, 0))
    select(blob_pool, None, **kwargs)
    assert os.stat(path).st_mtime_ns == 0  # read from the cache
    _, again = select(blob_pool, None, load_from_cache_file=False, **kwargs)
    assert os.stat(path).st_mtime_ns > 0 and again.selected_indices == in_memory.selected_indices


# ---- the parameter list, declared once (SelectArguments) ----

# diverse_select's own parameters: the pool and the way the result is returned.
FRONT_DOOR_ONLY = {"dataset", "split", "dry_run", "return_manifest"}


def _documented_parameters(function) -> dict[str, str]:
    """`name -> the parenthesis of its docstring entry` ("`float`, *optional*, defaults to `0.5`")."""
    import re

    args = function.__doc__.split("Args:")[1].split("Returns:")[0]
    return dict(re.findall(r"^ {8}(\w+) \((.*)\):$", args, flags=re.M))


def test_signature_docstring_and_dataclass_declare_the_same_parameters_and_defaults():
    """Every parameter of diverse_select is documented and every documented one exists; the docstring's
    "defaults to `x`", the signature's default and SelectArguments' default are one value for every parameter."""
    import ast
    import inspect

    from hf_idsel.arguments import ALIASES, DEFAULTS, OLD_NAMES

    signature = inspect.signature(diverse_select).parameters
    documented = _documented_parameters(diverse_select)
    assert list(documented) == list(signature)  # the same names, in the same order
    fields = {f.name: f for f in dataclasses.fields(SelectArguments)}
    assert set(signature) == set(fields) | FRONT_DOOR_ONLY | set(OLD_NAMES) | set(ALIASES)
    for name, parameter in signature.items():
        said = documented[name]
        if parameter.default is inspect.Parameter.empty:
            assert "*optional*" not in said, name
            continue
        assert "*optional*" in said, name
        if " defaults to `" in said:
            assert ast.literal_eval(said.split(" defaults to `")[1].rstrip("`")) == parameter.default, name
        else:  # a default of None goes unsaid
            assert parameter.default is None, name
        if name in fields:
            assert DEFAULTS[name] == parameter.default, name
    for old, new in OLD_NAMES.items():  # a deprecated name defaults to None (not given) and names its successor
        assert signature[old].default is None and f"Deprecated name of `{new}`" in diverse_select.__doc__


def test_every_field_has_help_and_the_manifest_tables_follow_from_its_metadata():
    from hf_idsel.arguments import NOT_RECORDED, RECORDED_ARGUMENTS, REPLAY_FROM_CALLER

    for field in dataclasses.fields(SelectArguments):
        assert field.metadata["help"].strip(), field.name
    assert set(RECORDED_ARGUMENTS) | set(NOT_RECORDED) == {f.name for f in dataclasses.fields(SelectArguments)}
    assert not set(RECORDED_ARGUMENTS) & set(NOT_RECORDED)
    assert set(NOT_RECORDED) == {
        "tokenizer", "encode_batch_size", "device", "cache_dir", "exclude_dataset", "target_dataset", "num_proc", "desc",
        "load_from_cache_file", "keep_in_memory",
    }
    # A replay takes machine settings and anything that loads code or weights from its caller, never from a file.
    assert set(REPLAY_FROM_CALLER) == set(NOT_RECORDED) | {"encoder", "encoder_revision", "trust_remote_code"}


def test_the_method_list_in_the_docstring_names_every_method():
    method = diverse_select.__doc__.split("        method (")[1].split("        k (")[0]
    for name in METHODS:
        assert f'`"{name}"`' in method, name


def test_old_names_select_the_same_rows_with_a_warning_naming_the_new_name(blob_pool):
    new_subset, new = select(blob_pool, 40, quality_column="quality", quality_temperature=0.3, return_manifest=True)
    with pytest.warns(FutureWarning, match="`temperature` is deprecated .* now called `quality_temperature`") as caught:
        old_subset, old = select(blob_pool, 40, quality_column="quality", temperature=0.3, return_manifest=True)
    assert_warned_at(caught[0], __file__)
    assert old_subset["source_index"] == new_subset["source_index"] and old.arguments == new.arguments
    assert old.arguments["quality_temperature"] == 0.3 and "temperature" not in old.arguments
    with pytest.warns(FutureWarning, match="now called `embed_answer`"):
        _, old = select(blob_pool, 40, include_answer=False, return_manifest=True)
    _, new = select(blob_pool, 40, embed_answer=False, return_manifest=True)
    assert old.selected_digest == new.selected_digest and old.arguments == new.arguments
    assert old.arguments["embed_answer"] is False and "include_answer" not in old.arguments
    # The same value under both names is one argument; two values are refused.
    with pytest.warns(FutureWarning):
        assert len(select(blob_pool, 40, temperature=0.3, quality_temperature=0.3)) == 40
    with pytest.warns(FutureWarning), pytest.raises(InvalidArgumentError, match=r"`temperature`=0.3 and `quality_temperature`=0.5 disagree"):
        select(blob_pool, 40, temperature=0.3, quality_temperature=0.5)


def test_a_manifest_written_with_the_old_names_replays_identically(blob_pool):
    from hf_idsel import Manifest, load_selection

    subset, manifest = select(blob_pool, 40, quality_column="quality", quality_temperature=0.3, embed_answer=False, return_manifest=True)
    data = manifest.to_dict()
    arguments = data["arguments"]
    arguments["temperature"] = arguments.pop("quality_temperature")
    arguments["include_answer"] = arguments.pop("embed_answer")
    old = Manifest.from_dict(data)
    assert load_selection(old, blob_pool, recompute=True)["source_index"] == subset["source_index"]
    arguments["quality_temperature"] = 0.5  # both names, two values: an edited file
    with pytest.raises(InvalidArgumentError, match="records both `quality_temperature` and its old name `temperature`"):
        load_selection(Manifest.from_dict(data), blob_pool, recompute=True)
