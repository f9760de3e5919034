"""Where everything a selection writes lives: file names, config names and folders, locally and on the Hub.

The push engine (`publish`), the cards, the report and the loaders all import their paths from here,
and never from each other, so a layout change is made in one place.
"""

from __future__ import annotations

import os
import re

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

ROUND_COLUMN = "selection_round"
"""Added to an iterative run's pushed rows: the round that drew each one."""

ITERATIVE_METHOD = "iterative-kmq"
"""The `method` an iterative run's manifests record."""

_ROUND_CONFIG = re.compile(r"round_(\d+)")
_ROUND_FILE = re.compile(r"round_(\d+)\.json")


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
