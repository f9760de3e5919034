"""Where everything a selection writes lives: file names, config names and folders, locally and on the Hub.

The push engine (`publish`), the cards, the report, the round files and the loaders all import their
paths from here, and never from each other, so a layout change is made in one place. The push plan
(`PUSH_FILE`) is read and written here too: the engine runs it, and the cards queue a model upload in it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

from .errors import InvalidArgumentError

DEFAULT_CONFIG = "default"
"""The config (and parquet file) holding every selected row."""

MANIFEST_FILE = "manifest.json"
"""The default config's manifest, at the top of a selection folder or dataset repo."""

MANIFESTS_DIR = "manifests"
"""Other configs' manifests: `manifests/<config>.json`."""

SELECTION_DIR = "selection"
"""An iterative run's round files (`selection/round_<r>.json`), under `output_dir` and in the dataset repo."""

STAGING_DIR = "_hf_idsel_selection"
"""Where the trainer stages its selection under `output_dir`; Trainer.push_to_hub skips `_*` paths."""

PUSH_FILE = "hf_idsel_push.json"
"""The push plan of a staged folder: its steps and the ones already done."""

DATA_DIR = "data"
"""A staged folder's rows: `data/<config>.parquet`."""

SUBSET_FILE = "subset.parquet"
"""The rows `hf-idsel select --out DIR` writes, with the sha256 of their bytes beside them (`DIGEST_SUFFIX`)."""

DIGEST_SUFFIX = ".sha256"
"""Beside a file hf_idsel wrote for a later push: the sha256 of its bytes as written (`<file>.sha256`)."""

CARD_FILE = "README.md"
"""The dataset card, at the top of a staged folder and of the dataset repo (the model card, beside the weights)."""

PLOT_FILE = "selection.png"
"""The plot of pool share against chosen share per cluster (and the weights per round)."""

CLUSTER_MAP_FILE = "cluster_map.png"
"""The map of the clusters, when the manifest records one."""

UPLOADED_FILES = (MANIFEST_FILE, f"{MANIFESTS_DIR}/*.json", f"{SELECTION_DIR}/*.json", PLOT_FILE, CLUSTER_MAP_FILE)
"""What a push uploads from the staged folder besides the rows and the card (patterns of `upload_folder`)."""

ROUND_COLUMN = "selection_round"
"""Added to an iterative run's pushed rows: the round that drew each one."""

ITERATIVE_METHOD = "iterative-kmq"
"""The `method` an iterative run's manifests record."""

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_ROUND_CONFIG = re.compile(r"round_(\d+)")
_ROUND_FILE = re.compile(r"round_(\d+)\.json")


def check_repo_id(repo_id, argument: str = "repo_id") -> str:
    """`repo_id` when it is a Hub repo id `namespace/name`; else a clear [`InvalidArgumentError`] naming `argument`."""
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or len(repo_id) > 96 or "--" in repo_id or ".." in repo_id:
        raise InvalidArgumentError(
            f"`{argument}`={repo_id!r} is not a Hub repo id: use 'namespace/name' (letters, digits, '-', '_', '.')."
        )
    return repo_id


def round_config(round_index: int) -> str:
    """The config name of one round's rows: `round_<r>`."""
    return f"round_{int(round_index)}"


def round_of_config(config: str) -> int | None:
    """The round a config name `round_<r>` names, or `None` for any other config."""
    match = _ROUND_CONFIG.fullmatch(config)
    return int(match.group(1)) if match else None


def round_file(round_index: int) -> str:
    """The file name of one round's record: `round_<r>.json` (under `SELECTION_DIR`)."""
    return f"{round_config(round_index)}.json"


def round_of_file(name: str) -> int | None:
    """The round a file name `round_<r>.json` records, or `None` for any other file."""
    match = _ROUND_FILE.fullmatch(os.path.basename(name))
    return int(match.group(1)) if match else None


def manifest_path(config: str) -> str:
    """Path of a config's manifest inside a selection folder or dataset repo."""
    return MANIFEST_FILE if config == DEFAULT_CONFIG else os.path.join(MANIFESTS_DIR, f"{config}.json")


def data_file(config: str) -> str:
    """Path of a config's staged rows inside a staged folder: `data/<config>.parquet`."""
    return os.path.join(DATA_DIR, f"{config}.parquet")


def staging_folder(output_dir: str) -> str:
    """Where a trainer run stages its selection: `output_dir/_hf_idsel_selection`."""
    return os.path.join(output_dir, STAGING_DIR)


def selection_repo_id(model_repo_id: str) -> str:
    """The dataset repo of a trainer run's selection when none is named: `<model repo>-selection`."""
    return f"{model_repo_id}-selection"


def config_order(config: str) -> tuple:
    """Sort key of config names: `round_1`, `round_2`, ... in round order, then the others by name."""
    round_index = round_of_config(config)
    return (0, round_index, config) if round_index is not None else (1, 0, config)


# ---- the push plan ----


def is_staged(folder: str) -> bool:
    """Whether `folder` holds a push plan (`PUSH_FILE`)."""
    return os.path.isfile(os.path.join(folder, PUSH_FILE))


def read_plan(folder: str) -> dict:
    """The push plan staged in `folder`, checked before it is trusted.

    Raises:
        [`InvalidArgumentError`]: `folder` holds no plan, or one that is not what hf_idsel writes.
    """
    path = os.path.join(folder, PUSH_FILE)
    if not os.path.isfile(path):
        raise InvalidArgumentError(f"{folder} holds no {PUSH_FILE}: it is not a folder staged by hf_idsel for a push.")
    try:
        with open(path, encoding="utf-8") as f:
            plan = json.load(f)
    except ValueError as err:
        raise InvalidArgumentError(f"{path}: not readable JSON ({err}); a truncated or corrupt file?") from None
    lists = ("configs", "done")
    digests = plan.get("digests", {}) if isinstance(plan, dict) else None
    if (
        not isinstance(plan, dict)
        or not isinstance(plan.get("repo_id"), str)
        or not all(isinstance(plan.get(key), list) and all(isinstance(v, str) for v in plan[key]) for key in lists)
        or not isinstance(digests, dict)
        or not all(isinstance(k, str) and isinstance(v, str) and _SHA256.fullmatch(v) for k, v in digests.items())
        or not isinstance(plan.get("license"), (str, type(None)))
    ):
        raise InvalidArgumentError(
            f"{path} is not a push plan written by hf_idsel (it needs `repo_id`, `configs` and `done`, and `digests` of "
            "sha256 values); stage the push again."
        )
    return plan


def write_plan(folder: str, plan: dict) -> None:
    """Write `plan` to `folder/PUSH_FILE` in one step (a stopped write never leaves half a plan)."""
    tmp = os.path.join(folder, PUSH_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(plan, f, indent=2)
    os.replace(tmp, os.path.join(folder, PUSH_FILE))


def queue_model_upload(folder: str) -> None:
    """Mark the model upload of the push staged in `folder` as not done, so that `hf-idsel push` sends the model
    folder again (after its card changed)."""
    plan = read_plan(folder)
    if "model" in plan["done"]:
        plan["done"].remove("model")
    write_plan(folder, plan)


# ---- digests of the files a push uploads ----


def file_sha256(path: str) -> str:
    """`sha256:<hex>` of a file's bytes, read in blocks."""
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def write_file_digest(path: str) -> str:
    """Store the sha256 of `path`'s bytes beside it (`<path>.sha256`), for [`check_file_digest`] before a push."""
    digest = file_sha256(path)
    tmp = path + DIGEST_SUFFIX + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(digest)
    os.replace(tmp, path + DIGEST_SUFFIX)
    return digest


def check_file_digest(path: str, fix: str) -> str:
    """`path`'s digest, when it matches the one [`write_file_digest`] stored beside it.

    Raises:
        [`InvalidArgumentError`]: no digest is stored, or the bytes changed since; one line naming the file and `fix`.
    """
    try:
        with open(path + DIGEST_SUFFIX, encoding="utf-8") as f:
            stored = f.read().strip()
    except FileNotFoundError:
        raise InvalidArgumentError(
            f"{path} has no {DIGEST_SUFFIX} digest of its bytes as hf_idsel wrote them (written by an older hf_idsel, or "
            f"the digest was removed), so edits since cannot be ruled out and it is not uploaded: {fix}"
        ) from None
    return _check_digest(path, stored, fix)


def record_staged_file(plan: dict, folder: str, relpath: str) -> None:
    """Record in `plan` the sha256 of the staged file `folder/relpath` as written, for [`check_staged_files`]."""
    plan.setdefault("digests", {})[relpath.replace(os.sep, "/")] = file_sha256(os.path.join(folder, relpath))


def check_staged_files(folder: str, plan: dict, relpaths: list[str], fix: str) -> None:
    """Refuse to upload a staged file whose bytes differ from the digest recorded when it was staged.

    Args:
        folder (`str`):
            The staged folder.
        plan (`dict`):
            Its push plan ([`read_plan`]).
        relpaths (`list[str]`):
            The staged files about to be uploaded, relative to `folder`.
        fix (`str`):
            What the user does to stage them again, quoted in the error.

    Raises:
        [`InvalidArgumentError`]: a file changed since it was staged, is missing, or has no recorded digest (a plan
            staged by an older hf_idsel); one line naming the file and `fix`.
    """
    digests = plan.get("digests") or {}
    for relpath in relpaths:
        key = relpath.replace(os.sep, "/")
        path = os.path.join(folder, relpath)
        if key not in digests:
            raise InvalidArgumentError(
                f"{path}: its push plan ({PUSH_FILE}) records no digest of it (staged by an older hf_idsel), so edits "
                f"since staging cannot be ruled out and it is not uploaded: {fix}"
            )
        if not os.path.isfile(path):
            raise InvalidArgumentError(f"{path} was staged for this push and is gone: {fix}")
        _check_digest(path, digests[key], fix)


def _check_digest(path: str, stored: str, fix: str) -> str:
    actual = file_sha256(path)
    if actual != stored:
        raise InvalidArgumentError(
            f"{path} changed after it was staged (sha256 {stored[7:19]}... then, {actual[7:19]}... now): hf_idsel "
            f"does not upload an edited file next to the manifest and card of the original: {fix}"
        )
    return actual
