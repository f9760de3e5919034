"""Rounds of iterative kMQ (Algorithm 1 of arXiv 2409.11378): round sizes, each round's draw, the
cluster scores and weight update that close a round, and the round record.

Plain numpy and JSON, testable without a Trainer; the command line, reports and cards read rounds
without loading torch or TRL. `IterativeSelectionTrainer` (trainer.py) only calls these functions
from its Trainer hooks. The algorithm is described in docs/method.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .errors import InvalidArgumentError
from .hub_layout import round_config, round_file, round_of_config
from .manifest import Manifest, indices_digest
from .sample import affinity_weights, kmq_sample

logger = logging.getLogger(__name__)

ROUND_MODES = ("continue", "restart")
WEIGHT_RULES = ("softmax", "linear", "softmax_replace")
# Names of the rules before they were named for what they compute; still accepted, with a warning.
WEIGHT_RULE_ALIASES = {"paper": "softmax", "research": "softmax_replace"}
# The quota rules of a round: diverse_select's `quota` rules, weighted by the cluster weights.
ROUND_QUOTAS = ("proportional", "equal")
# The values of the config's `round_quotas` before it became `quota`; still accepted, with a warning.
ROUND_QUOTA_ALIASES = {"size": "proportional", "weights": "equal"}
SCORED_ROWS = ("round", "selected")
_SEED_STRIDE = 1_000_003  # round r draws with seed * stride + r: rounds never share a stream


def round_sizes(budget_rows: int, rounds: int) -> list[int]:
    """Rows each round draws: `budget_rows / rounds`, the first rounds taking one more when it does not divide."""
    if rounds < 1:
        raise InvalidArgumentError(f"`rounds`={rounds} must be at least 1.")
    if rounds > budget_rows:
        raise InvalidArgumentError(f"`rounds`={rounds} is larger than the budget ({budget_rows} rows).")
    return [budget_rows // rounds + (1 if r < budget_rows % rounds else 0) for r in range(rounds)]


def canonical_weight_rule(rule: str, argument: str = "weight_update") -> str:
    """The name of a weight rule, an old name (`"paper"`, `"research"`) mapped to its new one with a `DeprecationWarning`."""
    if isinstance(rule, str) and rule in WEIGHT_RULE_ALIASES:
        new = WEIGHT_RULE_ALIASES[rule]
        warnings.warn(
            f"`{argument}`={rule!r} is deprecated: it is now called {new!r} (same behaviour). Pass {new!r}.",
            DeprecationWarning,
            stacklevel=3,
        )
        return new
    return rule


def canonical_quota(rule: str, argument: str = "quota") -> str:
    """The name of a round quota rule, an old value (`"size"`, `"weights"`) mapped to its new one with a
    `FutureWarning`."""
    if isinstance(rule, str) and rule in ROUND_QUOTA_ALIASES:
        new = ROUND_QUOTA_ALIASES[rule]
        warnings.warn(
            f"`{argument}`={rule!r} is deprecated: it is now called {new!r} (same behaviour). Pass {new!r}.",
            FutureWarning,
            stacklevel=3,
        )
        return new
    return rule


def round_seed(selection_seed: int, round_index: int) -> int:
    """Seed of round `round_index`'s draw and of its scored-row sample."""
    return int(selection_seed) * _SEED_STRIDE + int(round_index)


def labels_digest(labels: np.ndarray) -> str:
    """Digest of a clustering: a checkpoint resumes only on the clustering it was made with."""
    return "sha256:" + hashlib.sha256(np.asarray(labels, dtype="<i8").tobytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


@dataclass
class SelectionState:
    """The selection's progress: JSON in every checkpoint (field names are the file format), never a pickle."""

    k: int
    weights: list
    rounds: list = field(default_factory=list)  # one `RoundRecord.to_dict()` per finished round
    current_round: int = 1
    current_rows: list = field(default_factory=list)  # pool rows of the round in progress
    labels_digest: str = ""
    pending_losses: list = field(default_factory=list)  # [row, loss] gathered for the round in progress
    epochs_done: int = 0
    pool_digest: str = ""  # content of the pool columns the run reads; "" in checkpoints written before it
    epoch_end_steps: list = field(default_factory=list)  # global step at the end of each finished epoch

    @classmethod
    def start(cls, labels: np.ndarray, k: int) -> "SelectionState":
        """Round 1 of a fresh run: uniform weights over `k` clusters."""
        return cls(k=int(k), weights=[1.0 / k] * k, labels_digest=labels_digest(labels))

    def selected(self) -> list:
        """Every row selected so far: the finished rounds' rows, then the current round's."""
        rows = [r for done in self.rounds for r in done["selected"]]
        return rows + list(self.current_rows)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def check_resumable(self, labels_digest: str, pool_digest: str, pool_columns: list, *, where: str) -> None:
        """Refuse to resume this checkpoint's state on another clustering or on a pool whose rows changed:
        its row ids would point at other rows. A state written before pool digests is resumed with a warning."""
        if self.labels_digest != labels_digest:
            raise InvalidArgumentError(
                f"`resume_from_checkpoint`: {where} was made with a different clustering of the pool (a different "
                "pool, encoder, k or seed): resume with the pool and arguments of that run, or start a new run."
            )
        if not self.pool_digest:
            logger.warning(
                "%s predates content checks: only its clustering was verified, not the content of the pool's rows.", where
            )
        elif self.pool_digest != pool_digest:
            raise InvalidArgumentError(
                f"`resume_from_checkpoint`: the content of the pool changed since {where} was saved (columns "
                f"{pool_columns}: rows edited, reordered or replaced), so its row ids would point at other rows. "
                "Resume with the unchanged pool, or start a new run."
            )

    @classmethod
    def from_json(cls, text: str, *, where: str) -> "SelectionState":
        """Read a state written by `to_json`, refusing unknown or missing fields."""
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) - names or not {"k", "weights"} <= set(data):
            found = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise InvalidArgumentError(f"{where} is not a selection state (fields {found}, expected {sorted(names)}).")
        return cls(**data)


# --------------------------------------------------------------------------------------------
# Drawing a round
# --------------------------------------------------------------------------------------------


def draw_round(
    state: SelectionState,
    labels: np.ndarray,
    size: int,
    *,
    round_index: int,
    trainable: np.ndarray,
    selection_seed: int,
    quality: np.ndarray | None = None,
    quality_temperature: float = 1.0,
    quotas: str = "proportional",
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """kMQ draw of `size` rows not selected yet, with the cluster weights of `state` (uniform in round 1).

    Args:
        state (`SelectionState`):
            Progress so far; its selected rows are excluded.
        labels (`np.ndarray`):
            Cluster id of every pool row.
        size (`int`):
            Exact number of rows to draw.
        round_index (`int`):
            The round being drawn (1-based); seeds the draw.
        trainable (`np.ndarray`):
            Boolean mask of pool rows that survived tokenization.
        selection_seed (`int`):
            The run's selection seed.
        quality (`np.ndarray`, *optional*):
            Per-row quality for the in-cluster draw.
        quality_temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature of the in-cluster draw.
        quotas (`str`, *optional*, defaults to `"proportional"`):
            `"proportional"`: cluster j's quota is proportional to w_j x its rows not chosen yet (the paper; round 1
            is kMQ). `"equal"`: proportional to w_j alone (the research code; round 1, with uniform weights, gives
            every cluster the same quota). Either way the quotas sum to `size` exactly, and a cluster
            with too few rows left gives the rest to the others.
        prior (`np.ndarray`, *optional*):
            Fixed cluster weights multiplied into every round's (a target's `affinity ** sharpness`,
            [`target_prior`]): round 1 draws the target's kMQ quotas, later rounds reweight inside them.
    """
    if quotas not in ROUND_QUOTAS:
        raise InvalidArgumentError(f"`quota`={quotas!r}; choose one of {list(ROUND_QUOTAS)}.")
    eligible = np.asarray(trainable, dtype=bool).copy()
    eligible[np.asarray(state.selected(), dtype=np.int64)] = False
    weights = None if round_index == 1 and quotas == "proportional" else np.asarray(state.weights, dtype=np.float64)
    if prior is not None:
        weights = np.asarray(prior, dtype=np.float64) * (1.0 if weights is None else weights)
    if quotas == "equal":
        # cluster_quotas shares in proportion to weight x rows left: dividing by the rows left leaves the weight.
        available = np.bincount(labels[eligible], minlength=state.k)
        weights = np.where(available > 0, weights / np.maximum(available, 1), 0.0)
    return kmq_sample(
        labels,
        size,
        k=state.k,
        seed=round_seed(selection_seed, round_index),
        quality=quality,
        temperature=quality_temperature,
        weights=weights,
        eligible=eligible,
    )


# --------------------------------------------------------------------------------------------
# Scoring and re-weighting
# --------------------------------------------------------------------------------------------


def target_prior(record: dict | None) -> np.ndarray | None:
    """The fixed cluster weights of a run aimed at a target: `affinity ** sharpness` from its record (the manifest's
    `target`, [`~target.Target.record`]), or `None` without one."""
    if record is None:
        return None
    return affinity_weights(record["cluster_affinity"], record["sharpness"])


def _check_labels_and_rows(labels, rows) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    rows = np.asarray(rows)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidArgumentError(
            f"`labels` must be a 1-D integer array, got dtype {labels.dtype} and shape {labels.shape}."
        )
    if rows.size == 0:
        return labels, np.zeros(0, dtype=np.int64)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise InvalidArgumentError(
            f"`rows` must be a 1-D integer array, got dtype {rows.dtype} and shape {rows.shape}."
        )
    if rows.min() < 0 or rows.max() >= len(labels):
        raise InvalidArgumentError(f"`rows` must be row ids in [0, {len(labels)}), got values up to {rows.max()}.")
    return labels, rows.astype(np.int64)


def sample_rows_per_cluster(labels: np.ndarray, rows: np.ndarray, per_cluster: int, *, seed: int) -> np.ndarray:
    """Up to `per_cluster` rows of each cluster from the candidates `rows`, uniformly at random.

    Bounds the generation cost of a scoring round: the cluster means need a few rows each, not
    every trained row. The draw depends only on the set of candidates, `per_cluster` and `seed`.

    Args:
        labels (`np.ndarray`):
            Cluster id of every pool row.
        rows (`np.ndarray`):
            Candidate row ids (e.g. the rows trained on this round); no duplicates.
        per_cluster (`int`):
            Rows kept per cluster; `<= 0` keeps all candidates.
        seed (`int`):
            Seed of `np.random.default_rng`.

    Returns:
        `np.ndarray`: the chosen row ids, sorted (int64).
    """
    labels, rows = _check_labels_and_rows(labels, rows)
    if isinstance(per_cluster, bool) or not isinstance(per_cluster, (int, np.integer)):
        raise InvalidArgumentError(f"`per_cluster` must be an int, got {per_cluster!r}.")
    rows = np.sort(rows)
    if rows.size and np.any(rows[1:] == rows[:-1]):
        raise InvalidArgumentError("`rows` holds duplicate row ids.")
    if per_cluster <= 0 or rows.size == 0:
        return rows
    rng = np.random.default_rng(seed)
    row_labels = labels[rows]
    chosen = []
    for cluster in np.unique(row_labels):
        members = rows[row_labels == cluster]
        if len(members) > per_cluster:
            members = rng.choice(members, size=per_cluster, replace=False)
        chosen.append(members)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def merge_scores(pairs) -> tuple[np.ndarray, np.ndarray]:
    """Sorted rows and their scores from `(row, score)` pairs gathered from every rank; a row seen twice
    keeps its last score."""
    merged = {int(row): float(score) for row, score in pairs}
    rows = np.asarray(sorted(merged), dtype=np.int64)
    return rows, np.asarray([merged[r] for r in rows], dtype=np.float64)


def cluster_scores(labels: np.ndarray, rows: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Mean score of each cluster over its scored rows.

    Args:
        labels (`np.ndarray`):
            Cluster id (in `[0, k)`) of every pool row.
        rows (`np.ndarray`):
            The scored row ids.
        scores (`np.ndarray`):
            The score of each of `rows` (finite).
        k (`int`):
            Number of clusters.

    Returns:
        `np.ndarray`: float64 of shape `(k,)`; NaN for a cluster without a scored row.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidArgumentError(f"`k` must be an int >= 1, got {k!r}.")
    labels, rows = _check_labels_and_rows(labels, rows)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != rows.shape:
        raise InvalidArgumentError(f"`scores` has shape {scores.shape} but `rows` has {rows.shape}.")
    if not np.isfinite(scores).all():
        raise InvalidArgumentError("`scores` holds NaN or inf values.")
    row_labels = labels[rows]
    if row_labels.size and (row_labels.min() < 0 or row_labels.max() >= k):
        raise InvalidArgumentError(f"`labels` of the scored rows must lie in [0, {k}).")
    counts = np.bincount(row_labels, minlength=k)
    sums = np.bincount(row_labels, weights=scores, minlength=k)
    means = np.full(k, np.nan, dtype=np.float64)
    np.divide(sums, counts, out=means, where=counts > 0)
    return means


def update_weights(
    weights: np.ndarray,
    cluster_scores: np.ndarray,
    *,
    rule: str = "paper",
    temperature: float = 1.0,
    available: np.ndarray | None = None,
) -> np.ndarray:
    """Cluster weights for the next round from this round's cluster scores (NaN = not scored).

    With s the scores of the scored clusters and T = `temperature`:

    - `"softmax"` (the default; a smooth reading of the paper's Eq. 6): w_j <- softmax(s / T)_j x w_j,
      renormalised. Scored clusters keep their total weight on average.
    - `"linear"` (the paper's Eq. 6 as printed): w_j <- (s_j / sum s) x w_j, renormalised. Eq. 6 needs
      positive scores; when any score is <= 0 (a reward or likelihood difference can be), every score is
      shifted first, s <- s - min(s) + T, so the order is kept and the lowest cluster keeps a share set by T.
    - `"softmax_replace"` (the research code): scored clusters get softmax(s / T) of their total weight,
      forgetting the previous split.

    An unscored cluster keeps its weight; clusters with no rows left (`available == 0`) get 0. The old
    names `"paper"` (= `"softmax"`) and `"research"` (= `"softmax_replace"`) still work, with a warning.
    """
    rule = canonical_weight_rule(rule)
    if rule not in WEIGHT_RULES:
        raise InvalidArgumentError(f"`weight_update`={rule!r}; choose one of {list(WEIGHT_RULES)}.")
    weights = np.asarray(weights, dtype=np.float64).copy()
    scores = np.asarray(cluster_scores, dtype=np.float64)
    scored = np.isfinite(scores)
    if scored.any():
        if rule == "linear":
            s = scores[scored]
            if s.min() <= 0:
                s = s - s.min() + temperature
            weights[scored] *= s / s.sum() * scored.sum()
        else:
            z = scores[scored] / temperature
            soft = np.exp(z - z.max())
            soft /= soft.sum()
            if rule == "softmax":
                weights[scored] *= soft * scored.sum()
            else:
                weights[scored] = soft * weights[scored].sum()
    if available is not None:
        weights[np.asarray(available) <= 0] = 0.0
    total = weights.sum()
    if total <= 0:
        # Every weighted cluster is exhausted: fall back to size-proportional draws among the rest.
        weights = (np.asarray(available) > 0).astype(np.float64) if available is not None else np.ones_like(weights)
        total = weights.sum()
    return weights / total


# --------------------------------------------------------------------------------------------
# Closing a round
# --------------------------------------------------------------------------------------------


@dataclass
class RoundRecord:
    """One finished round, as round files, checkpoints, cards and `hf-idsel report` hold it.

    Args:
        round (`int`): the round, from 1.
        weights (`list[float]`): cluster weights after this round (they shape the next draw).
        cluster_scores (`list[float | None]`): mean score per cluster (`None`: no scored row).
        selected (`list[int]`): pool rows this round trained on, in drawn order.
        selected_per_cluster (`list[int]`): rows of `selected` per cluster.
        cumulative_size (`int`): rows selected over this and every earlier round.
        scorer (`str`): name of the scorer (`"callable"` for a plain function).
        scored (`bool`): whether this round was scored (see `score_last_round`).
        scored_rows (`int`): rows whose scores made `cluster_scores`.
        global_step (`int`): optimizer steps done when the round closed.
        k (`int`): number of clusters.
        k_selection (`dict`, *optional*): how k was chosen (`None` when given).
        cluster_terms (`list[str]`, *optional*): each cluster's distinctive terms, so that a round file
            says in words what the clusters its weights move are (`None` where no text was described).
        weight_update (`str`, *optional*): the weight rule that moved `weights`, by its canonical name
            (`None` in round files written before it was recorded).
        eval (`dict`, *optional*): the held-out evaluation after this round (`metrics` and the `items`
            evaluated, see [`evaluation.evaluate_model`]); `None` without `round_eval_tasks`.
    """

    round: int
    weights: list
    cluster_scores: list
    selected: list
    selected_per_cluster: list
    cumulative_size: int
    scorer: str
    scored: bool
    scored_rows: int
    global_step: int
    k: int
    # Absent from round files written before they existed (from_dict accepts that).
    k_selection: dict | None = field(default=None)
    cluster_terms: list | None = field(default=None)
    weight_update: str | None = field(default=None)
    eval: dict | None = field(default=None)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RoundRecord":
        """A round record from its JSON form (a round file, a checkpoint's `rounds`), checked field by field.

        Raises:
            [`InvalidArgumentError`]: a field is missing, unknown or not of its type (`k` values per cluster).
        """
        if not isinstance(data, dict):
            raise InvalidArgumentError(f"Not a round record: a JSON object was expected, got {type(data).__name__}.")
        names = [f.name for f in fields(cls)]
        optional = {"k_selection", "cluster_terms", "weight_update", "eval"}  # older round files lack the later ones
        unknown, missing = set(data) - set(names), set(names) - optional - set(data)
        if unknown or missing:
            raise InvalidArgumentError(
                f"Not a round record: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}."
            )
        record = cls(**data)
        wrong = record._wrong_fields()
        if wrong:
            raise InvalidArgumentError(f"Not a round record (round {data.get('round')!r}): {'; '.join(wrong)}.")
        return record

    def _wrong_fields(self) -> list[str]:
        """What in this record is not of its type: one line per field."""
        k = self.k if _is_int(self.k) and self.k >= 1 else None
        wrong = [] if k is not None else [f"`k`={self.k!r} is not a positive integer"]
        counts = {"round": 1, "cumulative_size": 0, "scored_rows": 0, "global_step": 0}
        wrong += [f"`{name}`={getattr(self, name)!r} is not an integer >= {low}" for name, low in counts.items()
                  if not (_is_int(getattr(self, name)) and getattr(self, name) >= low)]
        per_cluster = {
            "weights": lambda v: _is_number(v) and v >= 0,
            "cluster_scores": lambda v: v is None or _is_number(v, finite=False),
            "selected_per_cluster": lambda v: _is_int(v) and v >= 0,
            "cluster_terms": lambda v: isinstance(v, str),
        }
        for name, ok in per_cluster.items():
            values = getattr(self, name)
            if values is None and name == "cluster_terms":
                continue
            if not isinstance(values, list) or (k is not None and len(values) != k) or not all(ok(v) for v in values):
                wrong.append(f"`{name}` is not a list of {k if k is not None else 'k'} values, one per cluster")
        if not isinstance(self.selected, list) or not all(_is_int(v) and v >= 0 for v in self.selected):
            wrong.append("`selected` is not a list of pool rows")
        if not isinstance(self.scorer, str):
            wrong.append(f"`scorer`={self.scorer!r} is not a name")
        if not isinstance(self.scored, bool):
            wrong.append(f"`scored`={self.scored!r} is not true or false")
        if self.weight_update is not None and not isinstance(self.weight_update, str):
            wrong.append(f"`weight_update`={self.weight_update!r} is not a rule's name")
        for name in ("k_selection", "eval"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), dict):
                wrong.append(f"`{name}` is not a JSON object")
        if isinstance(self.eval, dict) and not all(isinstance(self.eval.get(key), dict) for key in ("metrics", "items")):
            wrong.append("`eval` lacks its `metrics` and `items`")
        return wrong


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value, *, finite: bool = True) -> bool:
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    try:
        return number and (not finite or math.isfinite(value))
    except OverflowError:  # an int too large for a float
        return False


def round_records(rounds) -> list[RoundRecord]:
    """`rounds` as `RoundRecord`s: records pass through, dicts (a `SelectionState`'s `rounds`) are read with
    [`RoundRecord.from_dict`]."""
    return [r if isinstance(r, RoundRecord) else RoundRecord.from_dict(r) for r in rounds]


def close_round(
    state: SelectionState,
    labels: np.ndarray,
    trainable: np.ndarray,
    scored_rows: np.ndarray,
    scores: np.ndarray,
    *,
    rule: str,
    temperature: float,
    scorer: str,
    scored: bool,
    global_step: int,
    k_selection: dict | None,
    cluster_terms: list | None = None,
) -> RoundRecord:
    """Score the round in progress per cluster, move the weights and record the round in `state`.

    Clusters without a scored row keep their weight; clusters with no row left drop to 0.
    """
    rows = np.asarray(state.current_rows, dtype=np.int64)
    means = cluster_scores(labels, scored_rows, scores, state.k)
    available = np.bincount(labels[trainable], minlength=state.k) - np.bincount(
        labels[np.asarray(state.selected(), dtype=np.int64)], minlength=state.k
    )
    rule = canonical_weight_rule(rule)
    weights = update_weights(np.asarray(state.weights), means, rule=rule, temperature=temperature, available=available)
    record = RoundRecord(
        round=state.current_round,
        weights=weights.tolist(),
        cluster_scores=[None if math.isnan(s) else float(s) for s in means],
        selected=rows.tolist(),
        selected_per_cluster=np.bincount(labels[rows], minlength=state.k).tolist(),
        cumulative_size=len(state.selected()),
        scorer=scorer,
        scored=bool(scored),
        scored_rows=int(len(scored_rows)),
        global_step=int(global_step),
        k=int(state.k),
        k_selection=k_selection,
        cluster_terms=cluster_terms,
        weight_update=rule,
    )
    state.rounds.append(record.to_dict())
    state.weights = record.weights
    state.current_rows = []
    state.pending_losses = []
    return record


def selection_manifest(
    state: SelectionState,
    labels: np.ndarray,
    config: str = "default",
    *,
    method: str,
    seed: int,
    budget_requested,
    budget_rows: int,
    **recorded,
) -> Manifest:
    """The manifest of one finished round's rows (`"round_<r>"`) or of every row selected so far (`"default"`).

    `recorded` are the manifest's other fields, the same for every config of a run (`pool`,
    `arguments`, `k_selection`, `render`, `encoder`, `decontamination`, `cluster_map`). With a `decontamination`
    record, `cluster_sizes` count the rows left, as in a static manifest: the removed rows carry their nearest
    centroid's label but were never in a cluster's draw.
    """
    done = state.rounds
    if config == "default":
        rows, what = state.selected(), {"rounds": [r["round"] for r in done]}
    else:
        round_index = round_of_config(config)
        if round_index is None or not 1 <= round_index <= len(done):
            finished = [round_config(r["round"]) for r in done]
            raise InvalidArgumentError(f"`config`={config!r}: the finished rounds are {finished} (or 'default').")
        rows, what = done[round_index - 1]["selected"], {"round": round_index}
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    selected_labels = labels[rows]
    kept = np.ones(len(labels), dtype=bool)
    kept[(recorded.get("decontamination") or {}).get("removed_indices", [])] = False
    return Manifest(
        method=method,
        seed=int(seed),
        k=int(state.k),
        budget={"requested": budget_requested, "rows": int(len(rows)), "total_rows": int(budget_rows), **what},
        cluster_sizes=np.bincount(labels[kept], minlength=state.k).tolist(),
        selected_per_cluster=np.bincount(selected_labels, minlength=state.k).tolist(),
        selected_indices=rows.tolist(),
        selected_clusters=selected_labels.tolist(),
        selected_digest=indices_digest(rows),
        **recorded,
    )


def round_metrics(record: RoundRecord, scores: np.ndarray) -> dict:
    """What the trainer logs when a round closes (`selection/*`)."""
    return {
        "selection/round": float(record.round),
        "selection/weight_entropy": weight_entropy(record.weights),
        "selection/score_mean": float(np.mean(scores)) if len(scores) else float("nan"),
        "selection/score_std": float(np.std(scores)) if len(scores) else float("nan"),
        "selection/rows_selected": float(len(record.selected)),
        "selection/cumulative_size": float(record.cumulative_size),
    }


def weight_entropy(weights) -> float:
    """Shannon entropy (nats) of a cluster weight vector; log(k) when the weights are uniform."""
    weights = np.asarray(weights, dtype=np.float64)
    positive = weights[weights > 0]
    return float(-(positive * np.log(positive)).sum())


def round_summary(state: SelectionState, *, rounds: int, budget_rows: int, clusters: int = 1) -> str:
    """One line a person reads when a round closes: the rows drawn and the clusters whose weight moved most.

    E.g. `round 1/2: drew 32 rows (32 of 64); weight up: cluster 3 'gsm8k, total, number' 0.125 -> 0.31; down:
    cluster 5 'def, return, list' 0.125 -> 0.007 (starved)`. A cluster is named by its terms when the run
    described its clusters; one left with under a tenth of an equal share (1/k) is marked starved, one with no
    rows left exhausted.

    Args:
        state ([`SelectionState`]):
            The run's progress; its last finished round is summarised, against the weights before it (uniform
            before round 1).
        rounds (`int`):
            Rounds in the run.
        budget_rows (`int`):
            Rows selected over every round.
        clusters (`int`, *optional*, defaults to `1`):
            Clusters named on each side (gaining, losing).
    """
    record = round_records(state.rounds[-1:])[0]
    before = np.asarray(state.rounds[-2]["weights"] if len(state.rounds) > 1 else [1.0 / record.k] * record.k)
    after = np.asarray(record.weights, dtype=np.float64)
    line = f"round {record.round}/{rounds}: drew {len(record.selected)} rows ({record.cumulative_size} of {budget_rows})"
    change = after - before
    moved = np.flatnonzero(np.abs(change) > 1e-9)
    if not len(moved):
        return line + "; weights unchanged" + ("" if record.scored else " (round not scored)")
    # Largest moves first; equal moves by cluster id.
    up = [int(j) for j in moved[np.lexsort((moved, -change[moved]))] if change[j] > 0][:clusters]
    down = [int(j) for j in moved[np.lexsort((moved, change[moved]))] if change[j] < 0][:clusters]

    def named(j: int) -> str:
        terms = (record.cluster_terms or [""] * record.k)[j]
        text = f"cluster {j}" + (f" {terms!r}" if terms else "") + f" {before[j]:.3g} -> {after[j]:.3g}"
        if after[j] == 0:
            return text + " (exhausted)"
        return text + (" (starved)" if after[j] < 0.1 / record.k else "")

    parts = [f"weight up: {'; '.join(named(j) for j in up)}"] if up else []
    parts += [f"down: {'; '.join(named(j) for j in down)}"] if down else []
    return f"{line}; {'; '.join(parts)}"


def write_round_file(folder: str, record: RoundRecord | dict) -> str:
    """Write one round record as `folder/round_<r>.json` (the one shape round files have)."""
    if isinstance(record, dict):
        record = RoundRecord.from_dict(record)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, round_file(record.round))
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record.to_dict(), f, indent=2)
    return path


def read_round_file(path: str) -> RoundRecord:
    """The round record a round file holds ([`write_round_file`]), checked field by field before it is trusted.

    Raises:
        [`InvalidArgumentError`]: the file is not readable JSON (truncated, corrupt) or not a round record; the
            message names the file.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, OSError) as err:  # json's and the decoder's errors are ValueErrors
        raise InvalidArgumentError(f"{path}: not a readable round file ({err}); a truncated or corrupt file?") from None
    try:
        return RoundRecord.from_dict(data)
    except InvalidArgumentError as err:
        raise InvalidArgumentError(f"{path}: {err}") from None
