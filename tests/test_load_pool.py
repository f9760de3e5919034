"""`hf_idsel.pool.load_pool`, the one pool loader of the CLI, the training recipes and `load_selection`."""

import json

import datasets
import pytest

from hf_idsel.errors import InvalidArgumentError
from hf_idsel.pool import load_pool

ROWS = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(6)]


def test_a_data_file_is_one_train_split(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    pool = load_pool(str(path))
    assert pool["prompt"] == [r["prompt"] for r in ROWS]
    # A split the file does not have is refused, named as the caller names it, not answered with the train rows.
    with pytest.raises(InvalidArgumentError, match=r"--split='test': POOL=.*has splits \['train'\]"):
        load_pool(str(path), split="test")
    with pytest.raises(InvalidArgumentError, match=r"`dataset_test_split`='test': `dataset_name`="):
        load_pool(str(path), split="test", source_argument="`dataset_name`", split_argument="`dataset_test_split`")


def test_text_files_load_and_unknown_file_types_are_refused(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("first line\nsecond line\n")
    assert load_pool(str(notes))["text"] == ["first line", "second line"]
    odd = tmp_path / "pool.xml"
    odd.write_text("<rows/>")
    with pytest.raises(InvalidArgumentError, match=r"POOL=.*unsupported file type '.xml'; use one of \['.arrow'"):
        load_pool(str(odd))


def test_saved_datasets_and_dataset_dicts_load_from_disk(tmp_path):
    train, test = datasets.Dataset.from_list(ROWS[:4]), datasets.Dataset.from_list(ROWS[4:])
    train.save_to_disk(str(tmp_path / "one"))
    assert load_pool(str(tmp_path / "one"))["prompt"] == train["prompt"]
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "two"))
    assert load_pool(str(tmp_path / "two"), split="test")["prompt"] == test["prompt"]
    with pytest.raises(InvalidArgumentError, match=r"has splits \['train', 'test'\]"):
        load_pool(str(tmp_path / "two"), split="validation")


def test_a_missing_local_path_is_named_without_asking_the_hub(tmp_path):
    for source in (str(tmp_path / "pool.jsonl"), "pool.jsonl", "./pools/mine", "data/pools/mine"):
        with pytest.raises(InvalidArgumentError, match=rf"POOL={source!r}: no such file or folder"):
            load_pool(source)


def test_a_hub_dataset_that_cannot_be_loaded_is_one_clear_error():
    # The tests run offline (conftest): the Hub is out of reach, as it is for a user without network.
    failed = r"POOL='someone/pool' is no local file or folder, and loading it as a Hub dataset failed: .*Hub"
    with pytest.raises(InvalidArgumentError, match=failed):
        load_pool("someone/pool")


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("pool.jsonl", b'{"prompt": "a"}\n{"prompt": "c", "completion": "d"\n{"prompt": "e"}\n', r"line 2 is not valid JSON"),
        ("pool.jsonl", b'{"prompt": "a"}\n\n{"prompt": "c"}\nnot json\n', r"line 4 is not valid JSON"),
        ("pool.json", b'[\n  {"prompt": "a"},\n  {"prompt": "c", "completion": "d"\n]\n', r"line 4 is not valid JSON"),
        # pyarrow takes text that is not UTF-8; once the file fails to parse, that line is the first one named.
        ("pool.jsonl", b'{"prompt": "a"}\n{"prompt": "\xff"}\n{"prompt": \n', r"line 2 is not UTF-8 text"),
    ],
)
def test_malformed_json_names_the_file_and_the_line(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_bytes(text)
    with pytest.raises(InvalidArgumentError, match=rf"POOL='{path}': {match} .*fix or remove that line"):
        load_pool(str(path))


def test_malformed_csv_is_named_with_the_parser_message(tmp_path):
    path = tmp_path / "pool.csv"
    path.write_text("prompt,completion\na,b\nc,d,e\n")
    with pytest.raises(InvalidArgumentError, match=rf"POOL='{path}' cannot be read as csv: .*line 3"):
        load_pool(str(path))
