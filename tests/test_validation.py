"""Argument checks of `diverse_select`, `IterativeSelectionConfig` and `IterativeSelectionTrainer`: every bad value
is refused with an `InvalidArgumentError` that names it, before any vector is embedded or any model loads; values
that are valid (numpy numbers included) give the same selection as before."""

import inspect
import json
import math
import re

import datasets
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import examples, planted_blobs
from hf_idsel import InvalidArgumentError, diverse_select
from hf_idsel.checks import MAX_INT32
from hf_idsel.config import IterativeSelectionConfig
from hf_idsel.sample import resolve_budget
from hf_idsel.plan import SelectionPlan

# A path that fails as soon as an encoder is looked up: a check that passed would end in its error instead.
MISSING_ENCODER = "/nonexistent/encoder"


def _pool(n_clusters=4, per_cluster=10):
    x, blob = planted_blobs(n_clusters, per_cluster, dim=8, seed=2)
    return datasets.Dataset.from_dict(
        {
            "text": [f"row {i}" for i in range(len(x))],
            "embedding": x.tolist(),
            "quality": np.linspace(-1, 1, len(x)).tolist(),
            "blob": blob.tolist(),
        }
    )


POOL = _pool()
VALID = {"budget": 10, "k": 3, "embedding_column": "embedding"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seed": 2**31}, r"`seed`=2147483648 must be an int in \[0, 2147483647\]. faiss"),
        ({"seed": -1}, r"`seed`=-1 must be an int in \[0, 2147483647\]"),
        ({"seed": 1.0}, r"`seed`=1.0 must be an int .*not float"),
        ({"seed": "0"}, r"`seed`='0' must be an int .*not str"),
        ({"seed": True}, r"`seed`=True must be an int"),
        ({"seed": np.int64(2**40)}, r"`seed`=1099511627776 must be an int in \[0, 2147483647\]"),
        ({"quality_temperature": float("nan")}, r"`quality_temperature`=nan must be a finite number > 0"),
        ({"quality_temperature": float("inf")}, r"`quality_temperature`=inf must be a finite number > 0"),
        ({"quality_temperature": True}, r"`quality_temperature`=True must be a finite number > 0, not bool"),
        ({"kmeans_niter": 0}, r"`kmeans_niter`=0 must be an int in \[1, 2147483647\]"),
        ({"kmeans_niter": -5}, r"`kmeans_niter`=-5"),
        ({"kmeans_niter": 2**31}, r"`kmeans_niter`=2147483648"),
        ({"dedup_threshold": "0.9"}, r"`dedup_threshold`='0.9' must be a finite number in \(0, 1\], not str"),
        ({"dedup_threshold": True}, r"`dedup_threshold`=True .*not bool"),
        ({"deita_threshold": "high"}, r"`deita_threshold`='high' must be a finite number in \(0, 1\]"),
        ({"deita_threshold": float("nan")}, r"`deita_threshold`=nan"),
        ({"qdit_alpha": "0.5"}, r"`qdit_alpha`='0.5' must be a finite number in \[0, 1\]"),
        ({"qdit_alpha": False}, r"`qdit_alpha`=False .*not bool"),
        ({"k": 2.0}, r"`k`=2.0 must be an int >= 1, not float. Pass the number of clusters, or k='auto'"),
        ({"k": "3"}, r"`k`='3' must be an int >= 1"),
        ({"k": np.array([1, 2])}, r"`k`="),
        ({"k_candidates": 4}, r"`k_candidates`=4 must be a list"),
        ({"k": "auto", "k_candidates": [2, True]}, r"`k_candidates`"),
        ({"method": ["kmq"]}, r"`method`=\['kmq'\]; choose one of"),
        ({"quota": None}, r"`quota`=None; choose one of"),
        ({"quality_weighting": np.array(["a", "b"])}, r"`quality_weighting`="),
        ({"format": "markdown"}, r"`format`='markdown'; choose one of \['messages'"),
        ({"embed_answer": "no"}, r"`embed_answer`='no' must be True or False"),
        ({"trust_remote_code": "false"}, r"`trust_remote_code`='false' must be True or False"),
        ({"dry_run": 1}, r"`dry_run`=1 must be True or False"),
        ({"return_manifest": "yes"}, r"`return_manifest`='yes' must be True or False"),
        ({"encode_batch_size": 0}, r"`encode_batch_size`=0 must be an int >= 1"),
        ({"device": 0.5}, r"`device`=0.5 must be a device name"),
        ({"cache_dir": 3}, r"`cache_dir`=3 must be a path"),
        ({"tokenizer": 3}, r"`tokenizer` must be a loaded tokenizer, got int .*AutoTokenizer.from_pretrained"),
        ({"tokenizer": "/nonexistent/tokenizer"}, r"`tokenizer`='/nonexistent/tokenizer' could not be loaded: .* Pass a local folder"),
        ({"encoder": None}, r"`encoder`=None must be a sentence-transformers model id"),
        ({"encoder_revision": 3}, r"`encoder_revision`=3 must be a non-empty string or None"),
        ({"quality_column": ["quality"]}, r"`quality_column`=\['quality'\] must be a non-empty string or None"),
        ({"text_column": ""}, r"`text_column`='' must be a non-empty string or None"),
        ({"split": ["train"]}, r"`split`=\['train'\] must be a non-empty string or None"),
        ({"max_tokens": 2.5, "budget": None}, r"`max_tokens`=2.5 must be an int >= 1"),
    ],
)
def test_bad_arguments_are_named_before_the_encoder(kwargs, match):
    # No `embedding_column`: a check that let the value through would go on to look up the missing encoder.
    arguments = {"budget": 10, "k": 3, "encoder": MISSING_ENCODER, **kwargs}
    with pytest.raises(InvalidArgumentError, match=match):
        diverse_select(POOL, **arguments)
    if "dry_run" not in kwargs:  # a dry run checks the same
        with pytest.raises(InvalidArgumentError, match=match):
            diverse_select(POOL, **arguments, dry_run=True)


def test_boundary_values_are_accepted():
    edges = ({"seed": MAX_INT32}, {"kmeans_niter": 1}, {"dedup_threshold": 1.0}, {"qdit_alpha": 0, "method": "qdit"})
    for kwargs in edges:
        assert len(diverse_select(POOL, **VALID, **kwargs)) == 10


def test_numpy_numbers_select_the_same_rows_and_are_recorded_as_json():
    plain, plain_manifest = diverse_select(POOL, seed=7, return_manifest=True, **VALID)
    numpy_args = {"budget": np.int64(10), "k": np.int32(3), "seed": np.int64(7), "kmeans_niter": np.int16(20)}
    subset, manifest = diverse_select(
        POOL, embedding_column="embedding", quality_temperature=np.float32(1.0), return_manifest=True, **numpy_args
    )
    assert subset["source_index"] == plain["source_index"]
    # Recorded as the plain numbers they are: the manifest is JSON, and `load_selection(recompute=True)` replays them.
    recorded = {name: manifest.arguments[name] for name in numpy_args}
    assert recorded == {"budget": 10, "k": 3, "seed": 7, "kmeans_niter": 20}
    assert manifest.arguments["quality_temperature"] == 1.0
    assert json.loads(json.dumps(manifest.to_dict()))["arguments"] == manifest.arguments
    assert manifest.selected_digest == plain_manifest.selected_digest


def test_a_temperature_that_overflows_the_scores_is_refused():
    with pytest.raises(InvalidArgumentError, match=r"`quality_temperature`=5e-324 is too small .* temperature overflows"):
        diverse_select(POOL, **VALID, quality_column="quality", quality_temperature=5e-324)
    # Methods that ignore the temperature take it as it is.
    assert len(diverse_select(POOL, **VALID, quality_column="quality", quality_temperature=5e-324, method="qdit")) == 10


# ---- IterativeSelectionConfig ----


def _config(tmp_path, **fields):
    return IterativeSelectionConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", **fields)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"selection_seed": 2**31}, r"`selection_seed`=2147483648 must be an int in \[0, 2147483647\]"),
        ({"selection_seed": -3}, r"`selection_seed`=-3"),
        ({"selection_seed": 1.5}, r"`selection_seed`=1.5 .*not float"),
        ({"seed": 2**31}, r"`seed`=2147483648 must be an int in \[0, 2147483647\]. faiss's k-means takes a 32-bit"),
        ({"weight_temperature": float("nan")}, r"`weight_temperature`=nan must be a finite number > 0"),
        ({"weight_temperature": 0}, r"`weight_temperature`=0 must be a finite number > 0"),
        ({"quality_temperature": float("nan")}, r"`quality_temperature`=nan must be a finite number > 0"),
        ({"quality_temperature": float("-inf")}, r"`quality_temperature`=-inf"),
        ({"quality_temperature": "1"}, r"`quality_temperature`='1' .*not str"),
        ({"scored_rows_per_cluster": -3}, r"`scored_rows_per_cluster`=-3 must be an int >= 0. 0 scores every"),
        ({"scored_rows_per_cluster": 2.5}, r"`scored_rows_per_cluster`=2.5"),
        ({"rounds": "3"}, r"`rounds`='3' must be an int >= 1, not str"),
        ({"rounds": 0}, r"`rounds`=0 must be an int >= 1"),
        ({"epochs_per_round": 1.0}, r"`epochs_per_round`=1.0"),
        ({"k": "0"}, r"`k`=0 must be an int >= 1"),
        ({"k": "three"}, r"`k`='three' must be an int, 'auto' or 'auto-global'"),
        ({"k": True}, r"`k`=True must be an int"),
        ({"encoder": 3}, r"`encoder`=3 must be a sentence-transformers model id"),
        ({"quality_column": ""}, r"`quality_column`=''"),
        ({"scorer": 3}, r"`scorer`=3: the config takes a scorer's name"),
        ({"weight_update": None}, r"`weight_update`=None; choose one of \['softmax', 'linear', 'softmax_replace'\]"),
        ({"round_mode": "loop"}, r"`round_mode`='loop'; choose one of"),
        ({"score_last_round": "no"}, r"`score_last_round`='no' must be True or False"),
        ({"generation_max_new_tokens": 0}, r"`generation_max_new_tokens`=0"),
        ({"scoring_batch_size": -1}, r"`scoring_batch_size`=-1"),
        ({"reference_model": None}, r"`reference_model`=None must be a non-empty string"),
        ({"budget": float("nan")}, r"`budget`=nan"),
    ],
)
def test_bad_config_fields_are_named(tmp_path, fields, match):
    with pytest.raises(InvalidArgumentError, match=match):
        _config(tmp_path, **fields)


def test_config_keeps_valid_values_and_makes_numbers_plain(tmp_path):
    args = _config(tmp_path, seed=5, scored_rows_per_cluster=0, k="4", quality_temperature=2)
    assert args.selection_seed == 5 and args.scored_rows_per_cluster == 0 and args.k_value == 4
    assert args.quality_temperature == 2 and type(args.quality_temperature) is int  # recorded as given
    args = _config(
        tmp_path, selection_seed=np.int64(9), budget=np.int64(12), rounds=np.int32(3), weight_temperature=np.float32(0.5)
    )
    assert (args.selection_seed, args.budget, args.rounds, args.weight_temperature) == (9, 12, 3, 0.5)
    json.dumps(args.selection_arguments())  # the manifest records them


def test_round_quotas_is_a_deprecated_name_of_quota_and_its_old_values_still_work(tmp_path):
    """The static and iterative entry points name the quota rule alike: `quota`, 'proportional' or 'equal'. The config's
    old name and values still work, with a FutureWarning naming the new ones; two different values are refused."""
    from hf_idsel.config import recorded_fields
    from hf_idsel.train import make_parser

    with pytest.warns(FutureWarning, match="`round_quotas` is deprecated .* now called `quota`"):
        old = _config(tmp_path, round_quotas="weights")
    assert (old.quota, old.round_quotas) == ("equal", None)
    with pytest.warns(FutureWarning, match="`quota`='size' is deprecated: it is now called 'proportional'"):
        assert _config(tmp_path, quota="size").quota == "proportional"
    with pytest.warns(FutureWarning):
        assert _config(tmp_path, round_quotas="equal", quota="equal").quota == "equal"  # one value, both names
    with pytest.warns(FutureWarning), pytest.raises(InvalidArgumentError, match="`round_quotas`='size' and `quota`='equal' disagree"):
        _config(tmp_path, round_quotas="size", quota="equal")
    with pytest.warns(FutureWarning), pytest.raises(InvalidArgumentError, match=r"`round_quotas`='sized'; choose one of"):
        _config(tmp_path, round_quotas="sized")
    # Recipes and the command line take both names.
    with pytest.warns(FutureWarning):
        _, parsed, _ = make_parser().parse_args_and_config(
            ["--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false", "--round_quotas", "weights"]
        )
    assert parsed.quota == "equal"
    # The manifests record the current name, and what they record is the fields marked RECORDED.
    recorded = old.selection_arguments()
    assert recorded["quota"] == "equal" and "round_quotas" not in recorded
    assert tuple(recorded) == recorded_fields() and {"budget", "k", "embed_answer", "quality_temperature"} <= set(recorded)


def test_trainer_refuses_a_pool_with_its_row_id_column_before_loading_the_model(tmp_path):
    from hf_idsel.trainer import ROW_ID, IterativeSelectionTrainer

    pool = datasets.Dataset.from_dict(
        {"prompt": ["a", "b"], "completion": ["c", "d"], ROW_ID: [0, 1], "embedding": [[1.0, 0.0], [0.0, 1.0]]}
    )
    args = _config(tmp_path, budget=2, rounds=1, k="1", embedding_column="embedding")
    # The model is a Hub id that cannot be loaded offline: the check has to come first.
    with pytest.raises(InvalidArgumentError, match=rf"already has a column '{ROW_ID}'.*rename_column"):
        IterativeSelectionTrainer("nonexistent/model", args=args, train_dataset=pool)


# ---- random bad values at every argument ----

JUNK = [
    None, True, False, -1, 0, 1, 3, 2**31, 2**63, -0.0, 0.5, 1.5, 5e-324, 1e300, float("nan"), float("inf"),
    float("-inf"), "", "x", "auto", "1", "text", "quality", "embedding", "missing", [], [2], [2, 3], (3,), {},
    np.int64(3), np.int64(2**40), np.float32(0.5), np.float64("nan"), np.bool_(True), np.array([1, 2]), object(), b"x",
]
SELECT_ARGUMENTS = [name for name in inspect.signature(diverse_select).parameters if name != "dataset"]
METHOD_NAMES = ["kmq", "random", "kmeans-random", "kmeans-closest", "kcenter", "deita", "qdit", "KMQ"]
DATASETS = ["pool", "dict", "empty", "list", None]
_ARGUMENT_NAME = re.compile(r"`(\w+)")


def _junk_for(name):
    values = st.sampled_from(JUNK + (METHOD_NAMES if name == "method" else []))
    if name == "embedding_column":
        # None means "run the encoder": valid, and the expensive path this test keeps away from.
        return values.filter(lambda v: v is not None)
    return values


_select_calls = st.sampled_from(SELECT_ARGUMENTS).flatmap(lambda name: st.tuples(st.just(name), _junk_for(name)))


def _dataset(kind):
    if kind == "pool":
        return POOL
    if kind == "dict":
        return datasets.DatasetDict({"train": POOL})
    if kind == "empty":
        return POOL.select([])
    return POOL.to_list() if kind == "list" else None


def _on(kwargs, flag):
    return isinstance(kwargs.get(flag), (bool, np.bool_)) and bool(kwargs[flag])


def _check_selection(result, kwargs, n):
    rows = resolve_budget(kwargs["budget"], n)
    if _on(kwargs, "dry_run"):
        plans = result.values() if isinstance(result, dict) else [result]
        assert all(isinstance(plan, SelectionPlan) and plan.budget_rows == rows for plan in plans)
        return
    if _on(kwargs, "return_manifest"):
        result, _ = result
    subsets = [result["train"]] if isinstance(result, datasets.DatasetDict) else [result]
    for subset in subsets:
        assert len(subset) == rows
        indices = subset["source_index"]
        assert len(set(indices)) == rows and all(0 <= i < n for i in indices)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # junk under the deprecated names too
@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dataset=st.sampled_from(DATASETS), changes=st.lists(_select_calls, min_size=1, max_size=3))
def test_random_bad_arguments_of_diverse_select(tmp_path, monkeypatch, dataset, changes):
    monkeypatch.chdir(tmp_path)  # a junk `cache_dir` such as "x" stays in the test's folder
    kwargs = {**VALID, **dict(changes)}
    try:
        result = diverse_select(_dataset(dataset), **kwargs)
    except InvalidArgumentError as err:
        named = set(_ARGUMENT_NAME.findall(str(err)))
        assert named & (set(SELECT_ARGUMENTS) | {"dataset"}), f"{err} names no argument"
        return
    _check_selection(result, kwargs, len(POOL))


CONFIG_FIELDS = [
    "budget", "rounds", "k", "encoder", "embed_with_model", "embedding_column", "quality_column", "quality_temperature",
    "scorer", "reward_model", "reward_template", "reference_model", "weight_update", "weight_temperature", "scored_rows", "scored_rows_per_cluster",
    "generation_max_new_tokens", "scoring_batch_size", "score_last_round", "epochs_per_round", "round_mode",
    "quota", "round_quotas", "embed_answer", "preset", "round_eval_tasks", "round_eval_items", "round_eval_allow_code_execution",
    "selection_seed", "seed", "pool_id", "hub_dataset_id", "hub_license",
]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # junk under the deprecated names too
@settings(max_examples=examples(1000), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.sampled_from(CONFIG_FIELDS), st.sampled_from(JUNK)), min_size=1, max_size=3))
def test_random_bad_fields_of_iterative_selection_config(tmp_path, changes):
    fields = dict(changes)
    try:
        args = _config(tmp_path, **fields)
        budget, sizes = args.check_pool(POOL)
    except InvalidArgumentError as err:
        named = set(_ARGUMENT_NAME.findall(str(err)))
        assert named & (set(CONFIG_FIELDS) | {"train_dataset"}), f"{err} names no field"
        return
    assert budget == resolve_budget(args.budget, len(POOL)) and sum(sizes) == budget and len(sizes) == args.rounds
    assert isinstance(args.selection_seed, int) and 0 <= args.selection_seed <= MAX_INT32
    assert math.isfinite(args.quality_temperature) and math.isfinite(args.weight_temperature)
    json.dumps(args.selection_arguments())
