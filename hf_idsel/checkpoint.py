"""The selection state a checkpoint holds (`hf_idsel_selection.json`): written with the run's round plan and a sha256
of its content, read back verified, and checked against the run that resumes it.

[`IterativeSelectionTrainer`] writes the state into every checkpoint ([`write_state`]) and reads it back in
`train(resume_from_checkpoint=...)` ([`load_state`], then [`check_steps`] once the epochs are planned). Before
anything trains, a resume is refused with a one-line `InvalidArgumentError` naming the file and the field or setting:

- the file is not readable JSON; a field is missing, mistyped or out of range; a row repeats, falls outside the pool
  or was dropped before the draws; the rounds disagree with their sizes, the epochs or the weights; or (format 2) the
  content does not match the stored `digest`;
- the resuming run has another plan ([`selection_plan`]): a setting of `PLAN_SETTINGS`, the scorer (and the settings
  it reads), the round sizes, how k was chosen, the encoder, the clusters' terms, or the pool rows left to draw from
  after tokenization and decontamination;
- the rounds are not what the plan gives: every recorded draw is drawn again, and every weight update recomputed from
  the recorded cluster scores ([`replay_state`]);
- the batch plan changed ([`check_steps`]): rows per optimizer step, or the optimizer steps planned for each epoch,
  which say where every epoch of the checkpoint ended and how much of the current one to skip.

What may change on resume, because it changes neither the draws nor the steps: logging, saving and evaluation
settings (`logging_*`, `save_*`, `eval_*`, `report_to`, `run_name`, `round_eval_tasks`, `round_eval_items`), the
output and Hub settings (`output_dir`, `push_to_hub`, `hub_*`, `hub_dataset_id`, `hub_license`, `pool_id`: the pool's
content is checked by its digest), `scoring_batch_size` (a memory knob: scores are per row), dataloader workers, and
the batch sizes, gradient accumulation and number of processes as long as the rows per optimizer step and the steps
of every epoch stay those of the checkpoint. The Trainer's own training settings (learning rate, optimizer, schedule)
follow Trainer's resume, which restores the optimizer and scheduler states from the checkpoint.

A state of format 1 (written before the plan and the digest) still resumes, with a warning that names what cannot
be checked: its rounds are replayed against the resuming run's plan, so a changed budget, round count, k, seed,
quota rule or weight rule is refused all the same. A digest is a checksum, not a signature: it catches a damaged
file or an edit, not someone who edits the state and recomputes its digest; the replay then still refuses any
change of rows or weights that the recorded scores do not explain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
from dataclasses import asdict, fields

import numpy as np

from .errors import InvalidArgumentError
from .manifest import indices_digest
from .rounds import RoundRecord, SelectionState, draw_round, labels_digest, target_prior, update_weights

logger = logging.getLogger(__name__)

STATE_FILE = "hf_idsel_selection.json"
STATE_FORMAT = 2  # 1: the state alone (no `plan`, no `digest`)

# Config fields the plan records as given: what decides which rows a run draws, how its rounds are scored and in
# which order its rows are trained (a resume skips the batches already trained in the current epoch).
PLAN_SETTINGS = (
    "budget", "rounds", "epochs_per_round", "k", "embed_with_model", "embedding_column", "embed_answer",
    "quality_column", "quality_temperature", "weight_update", "weight_temperature", "round_mode", "quota",
    "scored_rows", "scored_rows_per_cluster", "score_last_round", "selection_seed", "preset", "train_sampling_strategy",
)
# Config fields a named scorer reads (a scorer object passed to the trainer reads none of them).
SCORER_SETTINGS = {"reward": ("reward_model", "reward_template"), "likelihood": ("reference_model",)}
# What the plan records besides the settings: outcomes of the set-up, with the words an error uses for them.
_DERIVED = {
    "budget_rows": "the budget in rows",
    "round_sizes": "the rows per round",
    "k_selection": "the choice of k (`k_selection`)",
    "cluster_terms": "the clusters' terms",
    "trainable_rows": "the pool rows left to draw from after tokenization and `exclude_dataset`",
    "rows_per_step": "the rows per optimizer step (all processes)",
    "epoch_steps": "the optimizer steps of each epoch",
}
_STEPS = ("rows_per_step", "epoch_steps")  # known once the epochs are planned: checked by `check_steps`
_STATE_FIELDS = tuple(f.name for f in fields(SelectionState))
_MAX_DEPTH = 16  # a state nests 6 levels deep (plan.k_selection.seed_check.silhouette.<k>)
_FIX = "resume from another checkpoint, or start a new run in another `output_dir`"


def selection_plan(
    args, *, scorer: str, generation: bool, budget_rows: int, round_sizes, k_selection, encoder, cluster_terms,
    trainable: np.ndarray, rows_per_step: int | None = None, epoch_steps=None, target: dict | None = None,
) -> dict:
    """The round plan of a run, as a checkpoint records it and a resume compares it (JSON values only).

    Args:
        args (`IterativeSelectionConfig`):
            The run's configuration; the fields of `PLAN_SETTINGS` are recorded.
        scorer (`str`):
            The scorer's recorded name; the config fields it reads (`SCORER_SETTINGS`) are recorded with it.
        generation (`bool`):
            Whether the scorer generates answers (then `generation_max_new_tokens` is recorded).
        budget_rows (`int`), round_sizes (`list[int]`), k_selection (`dict`), encoder (`dict`), cluster_terms (`list`):
            The budget in rows, the rows of each round, how k was chosen, the encoder record and each cluster's terms.
        trainable (`np.ndarray`):
            Boolean mask of the pool rows the rounds may draw.
        rows_per_step (`int`, *optional*), epoch_steps (`list[int]`, *optional*):
            Rows per optimizer step over all processes, and the optimizer steps of every epoch; known once training
            started, so a checkpoint records them and a resume compares them in [`check_steps`].
        target (`dict`, *optional*):
            The run's target record ([`~target.Target.record`]): its digest, sharpness, task column and cluster
            affinities are recorded (the draws depend on them), only when the run has a target.
    """
    settings = {name: getattr(args, name) for name in PLAN_SETTINGS}
    settings["k"] = args.k_value  # "4" and 4 are the same k
    settings["train_sampling_strategy"] = getattr(args.train_sampling_strategy, "value", args.train_sampling_strategy)
    settings["scorer"] = scorer
    read = SCORER_SETTINGS.get(scorer, ()) if scorer == args.scorer else ()
    settings.update({name: getattr(args, name) for name in read})
    if generation:
        settings["generation_max_new_tokens"] = args.generation_max_new_tokens
    rows = np.flatnonzero(trainable)
    plan = {
        **settings, "encoder": encoder, "budget_rows": int(budget_rows), "round_sizes": [int(n) for n in round_sizes],
        "k_selection": k_selection, "cluster_terms": cluster_terms,
        "trainable_rows": {"rows": int(len(rows)), "digest": indices_digest(rows)},
    }
    if target is not None:
        plan["target"] = {name: target[name] for name in ("digest", "sharpness", "task_column", "cluster_affinity")}
    if epoch_steps:
        plan.update(rows_per_step=int(rows_per_step), epoch_steps=[int(s) for s in epoch_steps])
    return json.loads(json.dumps(plan))


def state_digest(data: dict) -> str:
    """sha256 of a state's content (every field but `digest`), independent of key order and layout."""
    content = {key: value for key, value in data.items() if key != "digest"}
    return "sha256:" + hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_state(state: SelectionState, folder: str, plan: dict) -> str:
    """Write `state` with `plan` and their digest as `folder/hf_idsel_selection.json` (atomically); returns the path."""
    data = {"format_version": STATE_FORMAT, **asdict(state), "plan": plan}
    data["digest"] = state_digest(data)
    path = os.path.join(folder, STATE_FILE)
    with open(path + ".incomplete", "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(path + ".incomplete", path)
    return path


class _Damaged(Exception):
    """A field of the state file that is wrong: the message names it."""


def read_state(path: str) -> tuple[SelectionState, dict | None]:
    """The state and the recorded plan (`None` in format 1) of a state file, checked before anything trusts them:
    readable JSON, every field of its type and range, rows distinct, rounds consistent with each other and with the
    epochs, and (format 2) the content matching its digest.

    Raises:
        [`InvalidArgumentError`]: naming `path` and the field.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.loads(f.read())
    except json.JSONDecodeError as err:
        raise InvalidArgumentError(
            f"`resume_from_checkpoint`: {path} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}): "
            f"the file is truncated or damaged; {_FIX}."
        ) from None
    except (OSError, ValueError, RecursionError) as err:
        raise InvalidArgumentError(
            f"`resume_from_checkpoint`: {path} is not readable ({type(err).__name__}: {err}); {_FIX}."
        ) from None
    try:
        if _nested_deeper(data, _MAX_DEPTH):
            raise _Damaged(f"it is nested deeper than a selection state ({_MAX_DEPTH} levels)")
        plan = _check_fields(data)
    except _Damaged as err:
        raise InvalidArgumentError(
            f"`resume_from_checkpoint`: {path}: {err}; the file is damaged or was edited: {_FIX}."
        ) from None
    if plan is not None and data["digest"] != state_digest(data):
        raise InvalidArgumentError(
            f"`resume_from_checkpoint`: {path}: its content does not match its `digest`: the file was edited or "
            f"damaged after it was written; {_FIX}."
        )
    return SelectionState(**{name: data[name] for name in _STATE_FIELDS if name in data}), plan


def _check_fields(data) -> dict | None:
    if not isinstance(data, dict):
        raise _Damaged(f"a JSON object was expected, got {type(data).__name__}")
    version = data.get("format_version", 1)
    if not _is_int(version) or not 1 <= version <= STATE_FORMAT:
        raise _Damaged(f"`format_version`={_short(version)} is not a format this hf_idsel reads (1 to {STATE_FORMAT})")
    wrapper = ("format_version", "plan", "digest") if version >= 2 else ()
    unknown = sorted(set(data) - set(_STATE_FIELDS) - set(wrapper))
    required = _STATE_FIELDS + wrapper if version >= 2 else ("k", "weights")
    missing = [name for name in required if name not in data]
    if unknown or missing:
        raise _Damaged(f"unknown fields {unknown}, missing fields {missing}")
    if version >= 2:
        _expect(data["plan"], dict, "plan", "a JSON object")
        _expect(data["digest"], str, "digest", "a 'sha256:...' string")
        if not data["pool_digest"]:
            raise _Damaged("`pool_digest` is empty")
    k = data["k"]
    if not _is_int(k) or k < 1:
        raise _Damaged(f"`k`={_short(k)} is not a positive int")
    _check_weights(data["weights"], k, "weights")
    for name in ("labels_digest", "pool_digest"):
        _expect(data.get(name, ""), str, name, "a 'sha256:...' string")
    for name in ("rounds", "current_rows", "pending_losses", "epoch_end_steps"):
        _expect(data.get(name, []), list, name, "a list")
    epochs = data.get("epochs_done", 0)
    if not _is_int(epochs) or epochs < 0:
        raise _Damaged(f"`epochs_done`={_short(epochs)} is not an int >= 0")
    ends = data.get("epoch_end_steps", [])
    if not all(_is_int(s) and s >= 0 for s in ends) or any(b < a for a, b in zip(ends, ends[1:])):
        raise _Damaged("`epoch_end_steps` is not a list of ascending steps")
    if len(ends) != epochs and (version >= 2 or ends):  # format 1 written before epoch ends were recorded has none
        raise _Damaged(f"`epoch_end_steps` has {len(ends)} entries for `epochs_done`={epochs}")

    seen = {}  # row -> where it was drawn
    for i, raw in enumerate(data.get("rounds", [])):
        where = f"rounds[{i}]"
        try:
            record = RoundRecord.from_dict(raw)
        except InvalidArgumentError as err:
            raise _Damaged(f"`{where}`: {err}") from None
        if record.round != i + 1 or record.k != k:
            raise _Damaged(f"`{where}` is round {record.round} of k={record.k}; round {i + 1} of k={k} was expected")
        if any(not _is_finite(s) for s in record.cluster_scores if s is not None):
            raise _Damaged(f"`{where}.cluster_scores` holds a value that is not a finite number")
        _check_weights(record.weights, k, f"{where}.weights")
        _check_rows(record.selected, f"{where}.selected", f"round {i + 1}", seen)
        if record.cumulative_size != len(seen):
            raise _Damaged(f"`{where}.cumulative_size`={record.cumulative_size}; the rounds so far drew {len(seen)} rows")
        if not record.scored and (record.scored_rows or any(s is not None for s in record.cluster_scores)):
            raise _Damaged(f"`{where}` was not scored but holds scores")
    rounds = data.get("rounds", [])
    current = data.get("current_round", 1)
    if current != len(rounds) + 1 or not _is_int(current):
        raise _Damaged(f"`current_round`={_short(current)} does not follow the {len(rounds)} finished rounds")
    _check_rows(data.get("current_rows", []), "current_rows", "the current round", seen)
    weights = rounds[-1]["weights"] if rounds else [1.0 / k] * k
    if data["weights"] != weights:
        raise _Damaged("`weights` are not those the last round left" if rounds else "`weights` are not uniform in round 1")
    return data.get("plan")


def _check_rows(rows, name: str, what: str, seen: dict) -> None:
    """`rows` are pool row ids drawn once: none repeats, none was drawn by an earlier round (`seen`: row -> round)."""
    if not isinstance(rows, list) or not all(_is_int(r) and r >= 0 for r in rows):
        raise _Damaged(f"`{name}` is not a list of pool rows")
    for row in rows:
        if row in seen:
            again = "" if seen[row] == what else f" ({seen[row]} drew it)"
            raise _Damaged(f"`{name}` repeats row {row}{again}")
        seen[row] = what


def _check_weights(weights, k: int, name: str) -> None:
    if not isinstance(weights, list) or len(weights) != k or not all(_is_finite(w) and w >= 0 for w in weights):
        raise _Damaged(f"`{name}` is not a list of {k} finite weights >= 0, one per cluster")
    if not math.isclose(math.fsum(weights), 1.0, abs_tol=1e-9):
        raise _Damaged(f"`{name}` does not sum to 1")


def check_plan(recorded: dict, current: dict, *, where: str, outcomes: bool = False) -> None:
    """Refuse to resume a checkpoint whose recorded plan differs from the resuming run's, naming every setting that
    differs (with `outcomes`: every outcome of the set-up, such as the round sizes or how k was chosen)."""
    names = [n for n in dict.fromkeys([*current, *recorded]) if n not in _STEPS and (n in _DERIVED) == outcomes]
    changed = [n for n in names if n not in recorded or n not in current or not _same(recorded[n], current[n])]
    if changed:
        raise InvalidArgumentError(
            f"`resume_from_checkpoint`: {where} was saved by a run with another selection plan ("
            + "; ".join(f"{_name(n)}: {_value(recorded, n)} in the checkpoint, {_value(current, n)} now" for n in changed)
            + "): resuming would change the selection mid-run. Resume with the original config, or start a new run "
            "in another `output_dir`."
        )


def load_state(
    path: str, plan: dict, *, k: int, labels: np.ndarray, trainable: np.ndarray, quality: np.ndarray | None, pool: dict,
) -> tuple[SelectionState, dict | None]:
    """Read the state file at `path` ([`read_state`]) and check it against the resuming run: its `plan`
    ([`selection_plan`] without the steps), its `k` clusters and their `labels`, its `trainable` rows, `quality`
    and `pool` record.

    Returns:
        `tuple[SelectionState, dict | None]`: the state to resume and the plan it recorded (`None` in format 1).

    Raises:
        [`InvalidArgumentError`]: naming `path` and the field or setting.
    """
    state, recorded = read_state(path)
    if recorded is not None:
        check_plan(recorded, plan, where=path)  # the settings first: they are what a user changes
    else:
        logger.warning(
            "%s predates the round plan (format 1): its rounds are replayed against this run's budget, rounds, k, seed, "
            "quotas and weight rule, but `round_mode`, `scored_rows`, `epochs_per_round`, the scorer's settings and the "
            "batch plan cannot be checked, and without a digest its losses and scores are not verified.", path,
        )
    state.check_resumable(labels_digest(labels), pool["digest"], pool["digest_columns"], where=path)
    if recorded is not None:
        check_plan(recorded, plan, where=path, outcomes=True)  # after the pool: a changed pool changes them all
    replay_state(
        state, plan, k=k, labels=labels, trainable=trainable, quality=quality, where=path, strict=recorded is not None
    )
    return state, recorded


def replay_state(
    state: SelectionState, plan: dict, *, k: int, labels, trainable, quality, where: str, strict: bool = True
) -> None:
    """Draw every round of `state` again under `plan` and recompute every weight update from the recorded cluster
    scores; refuse a state whose rows, sizes, weights or records differ from what the plan gives. Without `strict`
    (a state of format 1), round records may lack the fields that came later (`weight_update`, `cluster_terms`)."""
    def damaged(message):
        return InvalidArgumentError(
            f"`resume_from_checkpoint`: {where}: {message}: the file is damaged, or the plan changed since it was "
            f"written; resume with the original config, or {_FIX}."
        )

    sizes, epochs = plan["round_sizes"], plan["epochs_per_round"]
    if state.k != k:
        raise damaged(f"`k`={state.k}, but this run clusters the pool into {k} clusters")
    if len(state.rounds) > len(sizes):
        raise damaged(f"`rounds` holds {len(state.rounds)} rounds; the plan has {len(sizes)}")
    rows = state.selected()
    outside = [r for r in rows if r >= len(labels) or not trainable[r]]
    if outside:
        raise damaged(f"row {outside[0]} is not a pool row the rounds may draw")
    if state.epochs_done > len(sizes) * epochs or len(state.rounds) != state.epochs_done // epochs:
        raise damaged(f"`epochs_done`={state.epochs_done} does not close the {len(state.rounds)} finished rounds")
    replayed = SelectionState.start(labels, state.k)
    terms = plan["cluster_terms"]
    for i, raw in enumerate(state.rounds):
        record, r = RoundRecord.from_dict(raw), i + 1
        drawn = _draw(replayed, plan, r, labels=labels, trainable=trainable, quality=quality)
        if record.selected != drawn:
            raise damaged(f"`rounds[{i}].selected` are not the {sizes[i]} rows round {r} draws under this plan")
        replayed.current_rows = record.selected
        checks = {
            "selected_per_cluster": np.bincount(labels[drawn], minlength=state.k).tolist(),
            "scorer": plan["scorer"], "scored": r < len(sizes) or plan["score_last_round"],
            "k_selection": plan["k_selection"],
            "weight_update": plan["weight_update"] if strict or record.weight_update is not None else None,
            "cluster_terms": terms if strict or record.cluster_terms is not None else None,
        }
        wrong = [name for name, value in checks.items() if not _same(getattr(record, name), value)]
        if wrong:
            raise damaged(f"`rounds[{i}].{wrong[0]}`={_short(getattr(record, wrong[0]))} is not what this run records")
        if state.epoch_end_steps and record.global_step != state.epoch_end_steps[r * epochs - 1]:
            raise damaged(f"`rounds[{i}].global_step`={record.global_step} is not the step its last epoch ended at")
        left = np.bincount(labels[trainable], minlength=k) - np.bincount(labels[replayed.selected()], minlength=k)
        scores = np.array([np.nan if s is None else s for s in record.cluster_scores], dtype=np.float64)
        weights = update_weights(
            np.asarray(replayed.weights), scores, rule=plan["weight_update"], temperature=plan["weight_temperature"],
            available=left,
        )
        if not np.allclose(weights, record.weights, rtol=1e-12, atol=1e-15):
            raise damaged(f"`rounds[{i}].weights` are not what the weight rule gives from the round's cluster scores")
        replayed.rounds.append(raw)
        replayed.weights, replayed.current_rows = record.weights, []
    r = len(state.rounds) + 1
    expected = _draw(replayed, plan, r, labels=labels, trainable=trainable, quality=quality) if r <= len(sizes) else []
    if state.current_rows != expected:
        raise damaged(f"`current_rows` are not the {len(expected)} rows round {r} draws under this plan")


def _draw(state: SelectionState, plan: dict, round_index: int, *, labels, trainable, quality) -> list:
    state.current_round = round_index
    return draw_round(
        state, labels, plan["round_sizes"][round_index - 1], round_index=round_index, trainable=trainable,
        selection_seed=plan["selection_seed"], quality=quality, quality_temperature=plan["quality_temperature"],
        quotas=plan["quota"], prior=target_prior(plan.get("target")),
    ).tolist()


def check_steps(
    recorded: dict | None, state: SelectionState, *, rows_per_step: int, epoch_steps, global_step: int, where: str
) -> None:
    """Refuse to resume when the batch plan differs from the checkpoint's (rows per optimizer step, steps of every
    epoch), or when the state's epochs do not end where this plan says or do not hold the checkpoint's `global_step`.

    Args:
        recorded (`dict`, *optional*):
            The plan the checkpoint recorded (`None` in format 1: only the epochs are checked).
        state (`SelectionState`):
            The state being resumed.
        rows_per_step (`int`), epoch_steps (`list[int]`):
            This run's rows per optimizer step over all processes, and its planned steps of every epoch.
        global_step (`int`):
            The checkpoint's global step (Trainer's `trainer_state.json`).
    """
    if recorded is not None:
        now = {"rows_per_step": int(rows_per_step), "epoch_steps": [int(s) for s in epoch_steps]}
        changed = [n for n in _STEPS if recorded.get(n) != now[n]]
        if changed:
            raise InvalidArgumentError(
                f"`resume_from_checkpoint`: {where} was saved by a run with another batch plan ("
                + "; ".join(f"{_name(n)}: {_short(recorded.get(n))} in the checkpoint, {now[n]} now" for n in changed)
                + "): `per_device_train_batch_size`, `gradient_accumulation_steps`, the number of processes or "
                "`dataloader_drop_last` changed, so the resumed epoch would skip other rows than those trained. "
                "Resume with the original batch settings, or start a new run in another `output_dir`."
            )
    ends = np.cumsum(epoch_steps).tolist()
    done = state.epochs_done
    if done and not state.epoch_end_steps:
        return  # format 1, written before epoch ends were recorded: the trainer places them from the global step
    start = ends[done - 1] if 0 < done <= len(ends) else 0
    stop = ends[min(done, len(ends) - 1)]
    if done > len(ends) or state.epoch_end_steps != ends[:done] or not start <= global_step <= stop:
        raise InvalidArgumentError(
            f"`resume_from_checkpoint`: {where} does not belong to this checkpoint's training state (global step "
            f"{global_step}; the state has {done} epochs done, ending at steps {state.epoch_end_steps}, and this "
            f"run's epochs end at steps {ends}): the file was copied from another checkpoint or the batch plan "
            f"changed; {_FIX}."
        )


def _name(setting: str) -> str:
    return _DERIVED.get(setting, f"`{setting}`")


def _value(plan: dict, name: str) -> str:
    return _short(plan[name]) if name in plan else "not used"


def _same(a, b) -> bool:
    """Equal JSON values, numbers up to float noise: k-means on other thread counts may move the last bits of a
    silhouette score that `k_selection` records, without moving a label."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return _is_finite(a) and _is_finite(b) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return type(a) is type(b) and a == b


def _nested_deeper(data, limit: int) -> bool:
    """Whether JSON `data` nests lists and objects deeper than `limit` (walked without recursion)."""
    stack = [(data, 1)] if isinstance(data, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _expect(value, kinds, name: str, what: str) -> None:
    if not isinstance(value, kinds):
        raise _Damaged(f"`{name}`={_short(value)} is not {what}")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _short(value) -> str:
    try:
        text = json.dumps(value) if isinstance(value, (dict, list)) else repr(value)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."
