"""Rounds of iterative selection: the round record on disk and what is derived from cluster weights.

Plain numpy and JSON, so the command line, reports and cards can read rounds without loading
torch or TRL.
"""

from __future__ import annotations

import json
import os

import numpy as np

ROUND_FILE = "round_{round}.json"


def weight_entropy(weights) -> float:
    """Shannon entropy (nats) of a cluster weight vector; log(k) when the weights are uniform."""
    weights = np.asarray(weights, dtype=np.float64)
    positive = weights[weights > 0]
    return float(-(positive * np.log(positive)).sum())


def write_round_file(folder: str, record: dict) -> str:
    """Write one round record as `folder/round_<r>.json` (the one shape round files have)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ROUND_FILE.format(round=record["round"]))
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    return path
