"""IterativeSelectionConfig: the training arguments of IterativeSelectionTrainer (every SFTConfig
field) plus how the data is selected."""

from __future__ import annotations

import functools
import numbers
import os
import warnings
from dataclasses import dataclass, field, fields
from typing import Annotated, get_type_hints

from trl import SFTConfig

from .checks import check_choice, check_flag, check_int, check_model, check_name, check_number, check_seed
from .cluster import AUTO_K
from .embed import DEFAULT_ENCODER
from .errors import InvalidArgumentError
from .rounds import ROUND_MODES, ROUND_QUOTAS, SCORED_ROWS, WEIGHT_RULES, canonical_quota, canonical_weight_rule, round_sizes
from .sample import check_budget, parse_budget, resolve_budget
from .scorers import SCORERS
from .target import DEFAULT_TARGET_SHARPNESS
from .target import check_settings as check_target_settings




class _Recorded:
    """The mark of a field that an iterative run's manifests record under `arguments` (what decides the rows).

    An annotation (`Annotated[type, RECORDED]`), not field metadata: TrlParser hands every metadata key to argparse,
    and `get_type_hints` (which it calls) drops the mark.
    """

    def __repr__(self) -> str:
        return "RECORDED"


RECORDED = _Recorded()

# `preset="research_code"`: every choice of the paper's research code that differs from our defaults.
PRESETS = {
    "research_code": {
        "quota": "equal",  # round 1: equal quotas per cluster; later rounds: in proportion to the weights
        "weight_update": "softmax_replace",  # softmax of the scores replaces the weights
        "weight_temperature": 1.0,
        "round_mode": "restart",  # re-train from the base model on all of D' every round
        "scored_rows": "selected",  # score every row trained on so far
        "embed_answer": False,  # embed the prompt only
    }
}


def _parse_k(k) -> int | str:
    """`k` (`"auto"`, `"auto-global"`, an int, or an int as a string from the command line) as one of those strings
    or an int >= 1."""
    if isinstance(k, str) and k in AUTO_K:
        return k
    if isinstance(k, str):
        if not k.isdecimal():
            raise InvalidArgumentError(f"`k`={k!r} must be an int, 'auto' or 'auto-global'.")
        k = int(k)
    return check_int(k, "k", minimum=1, fix=" Pass the number of clusters, or 'auto'.")


class Budget:
    """Command-line type of `budget`: "64" is 64 rows, "0.1" and "1.0" are fractions of the pool
    (`sample.parse_budget`); a class, because `HfArgumentParser` takes the field's annotation as the type."""

    def __new__(cls, value):
        return parse_budget(value)


@dataclass
class IterativeSelectionConfig(SFTConfig):
    r"""
    Configuration for [`IterativeSelectionTrainer`]: every [`~trl.SFTConfig`] field, plus the selection.
    Every selection field is checked when the config is built (a NaN temperature, a string for a number,
    a seed faiss cannot take are refused with an `InvalidArgumentError` naming the field).
    `train_sampling_strategy` orders each round's rows (`"random"`, `"sequential"` = drawn order, or
    `"group_by_length"`); `"batch_rebalance"` is refused.

    Parameters:
        budget (`int` or `float`, *optional*, defaults to `0.1`):
            Rows to select over all rounds: an int is a row count, a float in (0, 1] a fraction of
            the pool (as in `diverse_select`; on the command line `--budget 1` is one row and
            `--budget 1.0` the whole pool).
        rounds (`int`, *optional*, defaults to `3`):
            Selection rounds; each draws `budget / rounds` new rows (the paper uses 3).
        k (`str`, *optional*, defaults to `"auto"`):
            Number of clusters, `"auto"` (the silhouette of the whole pool's clustering, k from 64 and below half
            the budget, the paper's way) or `"auto-global"` (the highest silhouette from k = 2).
        encoder (`str`, *optional*, defaults to `"sentence-transformers/all-MiniLM-L6-v2"`):
            Sentence encoder id or path (the default resolves to the packaged offline copy).
        embed_with_model (`bool`, *optional*, defaults to `False`):
            Embed the pool with the hidden states of the model being trained, taken before training
            (position-weighted mean of the last layer, RDS+, arXiv 2503.01807), instead of `encoder`: no
            extra model is loaded, and the clustering stays fixed for the run.
        embedding_column (`str`, *optional*):
            Precomputed vectors to cluster instead of running the encoder.
        quality_column (`str`, *optional*):
            Per-row quality for the draw inside a cluster (kMQ).
        quality_temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature of the in-cluster draw.
        scorer (`str`, *optional*, defaults to `"loss"`):
            How rounds are scored, by name: `"loss"`, `"likelihood"`, `"reward"` or `"perplexity"`
            (see `hf_idsel/scorers.py`). A scorer object (e.g. `JudgeScorer(judge)`) or a callable goes
            to the trainer's `scorer=` argument instead, which overrides this field. `"loss"` is free (the
            training forward passes' own losses, no generation); it is the default by the rule docs/fidelity.md
            pre-registered: in its v2 run no scorer's feedback beat random cluster scores, so the cheapest one
            is the default. `"likelihood"` (against `reference_model`) was the default before; nothing there
            shows it picks better rows than `"loss"`.
        reward_model (`str`, *optional*):
            Reward model id or path for `scorer="reward"`.
        reward_template (`str`, *optional*):
            How `scorer="reward"` formats conversations for the reward model: `None` (its tokenizer's
            chat template; an error when it has none), a Jinja chat template or the path of a `.jinja`
            file, or `"policy"` (the trained model's rendered prompt + answer, as is).
        reference_model (`str`, *optional*, defaults to `"base"`):
            Reference causal LM for `scorer="likelihood"`: `"base"`, the trained model with its LoRA adapters
            disabled (no second model), or without a `peft_config` a frozen copy of its starting weights (one
            more copy of the weights; refused under ZeRO-3/FSDP); or a Hub id or path, e.g.
            `"HuggingFaceTB/SmolLM2-135M-Instruct"` (packaged, offline).
        weight_update (`str`, *optional*, defaults to `"softmax"`):
            How cluster scores s move the cluster weights w (`rounds.update_weights`): `"softmax"`:
            w x softmax(s / T), renormalised; `"linear"`: the paper's Eq. 6 as printed, w x s / sum(s)
            (scores shifted to s - min(s) + T when any is <= 0); `"softmax_replace"` (the research code):
            softmax(s / T) alone. The old names `"paper"` (= `"softmax"`) and `"research"`
            (= `"softmax_replace"`) still work, with a `DeprecationWarning`.
        weight_temperature (`float`, *optional*, defaults to `1.0`):
            Temperature T of the weight update (the shift of `"linear"`).
        scored_rows (`str`, *optional*, defaults to `"round"`):
            Which rows a round's scores come from, for every scorer: `"round"`, the rows drawn this round,
            or `"selected"`, every row trained on so far (all of D', the paper's Algorithm 1 and the research
            code). Generation scorers then sample `scored_rows_per_cluster` of them per cluster. Cost:
            `"selected"` makes round r score r rounds' worth of rows, so with
            `scored_rows_per_cluster=0` a generation scorer generates an answer for every trained row, about
            (1 + 2 + ... + rounds) / rounds times the generation of `"round"` (2x for 3 rounds); the loss
            scorer in "continue" mode adds a no-grad forward pass over the earlier rounds' rows.
        scored_rows_per_cluster (`int`, *optional*, defaults to `8`):
            Rows of each cluster scored by generation scorers per round, drawn from the `scored_rows`
            (0 = all of them; negative values are refused).
        generation_max_new_tokens (`int`, *optional*, defaults to `128`):
            Length limit of the model's answers for generation scorers.
        scoring_batch_size (`int`, *optional*, defaults to `8`):
            Batch size for generation and scoring.
        score_last_round (`bool`, *optional*, defaults to `True`):
            Score the last round too. No round follows it, so its scores only set the weights recorded
            after it (round files, cards, `hf-idsel report`); `False` skips that scoring pass, which
            saves 1 / `rounds` of the scoring time of generation scorers (the loss scorer's scores
            come from training and cost nothing).
        epochs_per_round (`int`, *optional*, defaults to `1`):
            Passes over each round's rows.
        round_mode (`str`, *optional*, defaults to `"continue"`):
            `"continue"` (the paper) or `"restart"` (the research code): each round trains from the base weights
            on every row chosen so far, with a fresh optimizer and the whole learning-rate schedule (warm-up
            included) over that round's steps.
        quota (`str`, *optional*, defaults to `"proportional"`):
            Each round's cluster quotas, `diverse_select`'s rules weighted by the cluster weights: `"proportional"`,
            to weight x rows not chosen yet (round 1 is kMQ, the paper), or `"equal"`, to the weight alone (round 1
            gives every cluster the same quota, the research code). Quotas always sum to the round's size exactly.
            The old values `"size"` (= `"proportional"`) and `"weights"` (= `"equal"`) still work, with a
            `FutureWarning`.
        round_quotas (`str`, *optional*):
            Deprecated name of `quota` (a `FutureWarning`).
        target_sharpness (`float`, *optional*, defaults to `4.0`):
            With the trainer's `target_dataset=`: the exponent of each cluster's affinity to the target in the quotas
            (`size x affinity ** target_sharpness`, as `diverse_select(..., target_method="kmq")`); 0 ignores the target.
        target_task_column (`str`, *optional*):
            A column of `target_dataset` naming each example's task: every task pulls equally.
        embed_answer (`bool`, *optional*, defaults to `True`):
            Embed each row's gold answer with its prompt (the paper); `False` embeds the prompt only
            (the research code).
        preset (`str`, *optional*):
            `"research_code"`: every selection choice of the paper's research code at once
            (`quota="equal"`, `weight_update="softmax_replace"` at T = 1, `round_mode="restart"`,
            `scored_rows="selected"`, `embed_answer=False`, a uniform draw inside clusters, so no
            `quality_column`), without its crash bugs (docs/method.md lists both). A field set to another
            value than the preset's is refused.
        selection_seed (`int`, *optional*):
            Seed of clustering and draws, an int in [0, 2**31 - 1] (faiss's k-means takes a 32-bit seed);
            defaults to `seed`.
        pool_id (`str`, *optional*):
            Hub id of the pool, recorded in manifests and in the cards' `source_datasets`; lets
            `load_selection(hub_dataset_id)` load the pool by itself.
        hub_dataset_id (`str`, *optional*):
            With `push_to_hub=True`: the dataset repo that receives each round's rows (configs
            `round_1`, `round_2`, ...; all rows as the default config), manifests and round files.
            Defaults to `<hub_model_id>-selection`.
        hub_license (`str`, *optional*):
            License in the pushed model card; defaults to the base model card's license. A push
            that cannot tell the license stops before training starts.
    """

    budget: Annotated[Budget, RECORDED] = field(
        default=0.1,
        metadata={"help": "Rows to select over all rounds: an int is a row count, a float in (0, 1] a fraction of the pool."},
    )
    rounds: Annotated[int, RECORDED] = field(default=3, metadata={"help": "Selection rounds; each draws budget / rounds new rows."})
    k: Annotated[str, RECORDED] = field(
        default="auto",
        metadata={"help": "Number of clusters, 'auto' (silhouette, k from 64 and below budget/2) or 'auto-global' (from k=2)."},
    )
    encoder: Annotated[str, RECORDED] = field(default=DEFAULT_ENCODER, metadata={"help": "Sentence encoder id or path."})
    embed_with_model: Annotated[bool, RECORDED] = field(
        default=False,
        metadata={"help": "Embed the pool with the hidden states of the model being trained (before training) instead of `encoder`."},
    )
    embedding_column: Annotated[str | None, RECORDED] = field(
        default=None, metadata={"help": "Column of precomputed vectors to cluster instead of running the encoder."}
    )
    quality_column: Annotated[str | None, RECORDED] = field(
        default=None, metadata={"help": "Per-row quality column for the draw inside a cluster (kMQ)."}
    )
    quality_temperature: Annotated[float, RECORDED] = field(default=1.0, metadata={"help": "Softmax temperature of the in-cluster draw."})
    scorer: Annotated[str, RECORDED] = field(
        default="loss",
        metadata={
            "help": f"Round scorer by name: one of {list(SCORERS)} (objects and callables go to the trainer's `scorer=`)."
        },
    )
    reward_model: str | None = field(default=None, metadata={"help": "Reward model id or path for scorer='reward'."})
    reward_template: str | None = field(
        default=None,
        metadata={
            "help": "Chat format of the reward model's input: None (its tokenizer's chat template), a Jinja template "
            "or .jinja path, or 'policy' (the trained model's rendered text)."
        },
    )
    reference_model: str = field(
        default="base",
        metadata={
            "help": "Reference causal LM for scorer='likelihood': 'base' (the trained model with its LoRA adapters off, "
            "or a frozen copy of its starting weights without LoRA), or a model id or path."
        },
    )
    weight_update: Annotated[str, RECORDED] = field(
        default="softmax",
        metadata={
            "help": "Cluster weight rule: 'softmax' (w x softmax(s/T)), 'linear' (the paper's Eq. 6, w x s/sum s) or "
            "'softmax_replace' (the research code). Old names 'paper' and 'research' are deprecated aliases."
        },
    )
    weight_temperature: Annotated[float, RECORDED] = field(default=1.0, metadata={"help": "Temperature of the weight update (shift of 'linear')."})
    scored_rows: Annotated[str, RECORDED] = field(
        default="round",
        metadata={
            "help": "Rows each round is scored on, for every scorer: 'round' (drawn this round) or 'selected' (all "
            "rows trained on so far, the paper's choice; costs more generation).",
            "choices": list(SCORED_ROWS),
        },
    )
    scored_rows_per_cluster: Annotated[int, RECORDED] = field(
        default=8, metadata={"help": "Rows per cluster scored by generation scorers each round (0 = all)."}
    )
    generation_max_new_tokens: int = field(
        default=128, metadata={"help": "Length limit of generated answers for generation scorers."}
    )
    scoring_batch_size: int = field(default=8, metadata={"help": "Batch size for generation and scoring."})
    score_last_round: bool = field(
        default=True,
        metadata={"help": "Score the last round too (its scores only set the recorded final weights); False saves that pass."},
    )
    epochs_per_round: Annotated[int, RECORDED] = field(default=1, metadata={"help": "Passes over each round's rows."})
    round_mode: Annotated[str, RECORDED] = field(
        default="continue",
        metadata={"help": "'continue' (paper) or 'restart' (research code).", "choices": list(ROUND_MODES)},
    )
    quota: Annotated[str, RECORDED] = field(
        default="proportional",
        metadata={
            "help": "Round quotas: 'proportional' (weight x rows left; round 1 = kMQ) or 'equal' (weight alone; the "
            "research code). Old values 'size' and 'weights' are deprecated aliases."
        },
    )
    round_quotas: str | None = field(default=None, metadata={"help": "Deprecated name of `quota`."})
    target_sharpness: float = field(
        default=DEFAULT_TARGET_SHARPNESS,
        metadata={"help": "With a target: the exponent of each cluster's affinity to it in the quotas (0 ignores it)."},
    )
    target_task_column: str | None = field(
        default=None, metadata={"help": "A column of the target naming each example's task: every task pulls equally."}
    )
    embed_answer: Annotated[bool, RECORDED] = field(
        default=True, metadata={"help": "Embed the gold answer with the prompt (False: prompt only, the research code)."}
    )
    preset: Annotated[str | None, RECORDED] = field(
        default=None,
        metadata={"help": "'research_code': every selection choice of the paper's research code.", "choices": list(PRESETS)},
    )
    selection_seed: Annotated[int | None, RECORDED] = field(default=None, metadata={"help": "Seed of clustering and draws (default: seed)."})
    pool_id: Annotated[str | None, RECORDED] = field(
        default=None, metadata={"help": "Hub id of the pool, recorded in manifests and cards (source_datasets)."}
    )
    hub_dataset_id: str | None = field(
        default=None,
        metadata={"help": "Dataset repo for the selected rows, one config per round (default: <hub_model_id>-selection)."},
    )
    hub_license: str | None = field(
        default=None, metadata={"help": "License of the pushed model card (default: the base model's license)."}
    )
    round_eval_tasks: list[str] | None = field(
        default=None,
        metadata={
            "help": "Evaluate after each round on rows held out from the pool: tasks from gsm8k, mmlu, humaneval "
            "(`eval/*` metrics, round files, report, model card). Default: no evaluation."
        },
    )
    round_eval_items: int = field(default=30, metadata={"help": "Held-out items per task of the per-round evaluation."})
    round_eval_allow_code_execution: bool = field(
        default=False,
        metadata={"help": "Let the humaneval task run the model's code on this machine (a subprocess, not a sandbox)."},
    )

    def __post_init__(self):
        self._check_selection_fields()
        if self.scorer not in SCORERS:
            raise InvalidArgumentError(
                f"`scorer`={self.scorer!r}; choose one of {list(SCORERS)}. A judge or any other scorer is a Python "
                "object: pass `scorer=JudgeScorer(judge)` (or a callable) to IterativeSelectionTrainer."
            )
        if self.scorer == "reward" and not self.reward_model:
            raise InvalidArgumentError(
                "`scorer`='reward' needs `reward_model` (a sequence-classification reward model id or path), "
                "or pass `scorer=RewardScorer(model, tokenizer)` to the trainer and leave this field alone."
            )
        if self.max_steps is not None and self.max_steps > 0:
            raise InvalidArgumentError(
                "`max_steps` cannot be used: rounds are epochs. Set `rounds` and `epochs_per_round` instead."
            )
        if getattr(self, "packing", False):
            raise InvalidArgumentError(
                "`packing=True` merges rows into one sequence, so training can no longer be traced back to pool rows "
                "and clusters. Turn packing off for iterative selection (or select with hf_idsel.diverse_select first "
                "and pack the subset with a plain SFTTrainer)."
            )
        if getattr(self, "train_sampling_strategy", "random") == "batch_rebalance":
            raise InvalidArgumentError(
                "`train_sampling_strategy`='batch_rebalance' is not supported: each round's rows come from the "
                "selection's own sampler. Use 'group_by_length' to cut padding, or 'random' / 'sequential'."
            )
        self.num_train_epochs = self.rounds * self.epochs_per_round
        super().__post_init__()

    def _apply_preset(self) -> None:
        """Set the preset's fields; a field already set to another value than the preset's is refused."""
        if self.preset is None:
            return
        check_choice(self.preset, "preset", list(PRESETS))
        defaults = {f.name: f.default for f in fields(self)}
        for name, value in PRESETS[self.preset].items():
            current = getattr(self, name)
            if name == "weight_update":
                current = canonical_weight_rule(current)
            if current != defaults[name] and current != value:
                raise InvalidArgumentError(
                    f"`preset`={self.preset!r} sets `{name}`={value!r}, but `{name}`={getattr(self, name)!r} was given: "
                    f"drop `{name}` or the preset."
                )
            setattr(self, name, value)
        if self.quality_column is not None:
            raise InvalidArgumentError(
                f"`preset`={self.preset!r} draws uniformly inside clusters, as the research code does, so "
                f"`quality_column`={self.quality_column!r} would be ignored: drop one of them."
            )

    def _take_old_names(self) -> None:
        """`round_quotas` (the old name of `quota`) moved to `quota`, with a `FutureWarning`; old values renamed."""
        if self.round_quotas is not None:
            warnings.warn(
                "`round_quotas` is deprecated and will be removed: it is now called `quota`. Pass `quota` instead.",
                FutureWarning,
                stacklevel=5,
            )
            old = canonical_quota(self.round_quotas, "round_quotas")
            check_choice(old, "round_quotas", ROUND_QUOTAS)
            current = canonical_quota(self.quota)
            if current != "proportional" and current != old:
                raise InvalidArgumentError(
                    f"`round_quotas`={self.round_quotas!r} and `quota`={self.quota!r} disagree: pass only `quota` "
                    "(`round_quotas` is its deprecated name)."
                )
            self.quota, self.round_quotas = old, None
        self.quota = canonical_quota(self.quota)  # configs record the canonical name

    def _check_selection_fields(self) -> None:
        """The type and range of every selection field, before anything is loaded; numbers become Python numbers."""
        self._take_old_names()
        self._apply_preset()
        self.budget = parse_budget(self.budget)
        check_budget(self.budget)
        self.budget = int(self.budget) if isinstance(self.budget, numbers.Integral) else float(self.budget)
        self.rounds = check_int(self.rounds, "rounds", minimum=1)
        self.epochs_per_round = check_int(self.epochs_per_round, "epochs_per_round", minimum=1)
        k = _parse_k(self.k)
        if not isinstance(self.k, str):
            self.k = k  # numpy ints as Python ints: manifests record `k`
        self.encoder = os.fspath(check_model(self.encoder, "encoder", loaded=False))
        self.embed_with_model = check_flag(self.embed_with_model, "embed_with_model")
        if self.embed_with_model and self.embedding_column is not None:
            raise InvalidArgumentError(
                "`embed_with_model=True` embeds the pool with the model and `embedding_column` gives vectors: pass one of them."
            )
        for name in ("embedding_column", "quality_column", "reward_model", "pool_id", "hub_dataset_id", "hub_license"):
            check_name(getattr(self, name), name)
        check_name(self.reference_model, "reference_model", optional=False)
        check_name(self.reward_template, "reward_template")
        self.quality_temperature = check_number(self.quality_temperature, "quality_temperature", above=0)
        self.weight_temperature = check_number(self.weight_temperature, "weight_temperature", above=0)
        if not isinstance(self.scorer, str):
            raise InvalidArgumentError(
                f"`scorer`={self.scorer!r}: the config takes a scorer's name ({list(SCORERS)}); pass a scorer "
                "object or a callable to IterativeSelectionTrainer's `scorer=` instead."
            )
        self.weight_update = canonical_weight_rule(self.weight_update)  # configs record the canonical name
        check_choice(self.weight_update, "weight_update", WEIGHT_RULES)
        check_choice(self.round_mode, "round_mode", ROUND_MODES)
        scheduler = getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)
        if self.round_mode == "restart" and scheduler == "reduce_lr_on_plateau":
            raise InvalidArgumentError(
                "`lr_scheduler_type`='reduce_lr_on_plateau' reacts to evaluation metrics and cannot start over with "
                "every round of round_mode='restart': use a step schedule ('linear', 'cosine', 'constant', ...)."
            )
        check_choice(self.quota, "quota", ROUND_QUOTAS)
        check_target_settings("kmq", self.target_sharpness, self.target_task_column)
        self.target_sharpness = float(self.target_sharpness)
        check_choice(self.scored_rows, "scored_rows", SCORED_ROWS)
        self.embed_answer = check_flag(self.embed_answer, "embed_answer")
        self.scored_rows_per_cluster = check_int(
            self.scored_rows_per_cluster, "scored_rows_per_cluster", minimum=0, fix=" 0 scores every trained row."
        )
        for name in ("generation_max_new_tokens", "scoring_batch_size"):
            setattr(self, name, check_int(getattr(self, name), name, minimum=1))
        self.score_last_round = check_flag(self.score_last_round, "score_last_round")
        if self.round_eval_tasks is not None:
            from .evaluation import check_tasks

            self.round_eval_allow_code_execution = check_flag(self.round_eval_allow_code_execution, "round_eval_allow_code_execution")
            self.round_eval_tasks = check_tasks(
                self.round_eval_tasks, allow_code_execution=self.round_eval_allow_code_execution,
                argument="round_eval_tasks", allow_argument="round_eval_allow_code_execution",
            )
            self.round_eval_items = check_int(self.round_eval_items, "round_eval_items", minimum=1)
        # Without `selection_seed` the run's `seed` seeds the selection too: the error then names `seed`.
        if self.selection_seed is None:
            self.selection_seed = check_seed(self.seed, "seed")
        else:
            self.selection_seed = check_seed(self.selection_seed, "selection_seed")

    @property
    def k_value(self) -> int | str:
        """`k` as an int, `"auto"` or `"auto-global"`."""
        return _parse_k(self.k)

    def selection_arguments(self) -> dict:
        """The selection fields as an iterative run's manifests record them under `arguments` (the fields marked
        [`RECORDED`])."""
        return {name: getattr(self, name) for name in recorded_fields(type(self))}

    def check_pool(self, pool) -> tuple[int, list[int]]:
        """Check the budget, rounds, k and named columns against `pool`, before any model is loaded.

        Returns:
            `tuple[int, list[int]]`: the budget in rows and the rows each round draws.
        """
        if len(pool) == 0:
            raise InvalidArgumentError("`train_dataset` (the pool) is empty.")
        budget = resolve_budget(self.budget, len(pool))
        sizes = round_sizes(budget, self.rounds)
        k = self.k_value
        if not isinstance(k, str) and not 1 <= k <= len(pool):
            raise InvalidArgumentError(f"`k`={k} must be between 1 and the number of pool rows ({len(pool)}).")
        for name in ("quality_column", "embedding_column"):
            column = getattr(self, name)
            if column is not None and column not in pool.column_names:
                raise InvalidArgumentError(f"`{name}`={column!r} is not a column of the pool (columns: {pool.column_names}).")
        return budget, sizes


@functools.cache
def recorded_fields(config_class: type = IterativeSelectionConfig) -> tuple[str, ...]:
    """The fields of `config_class` marked [`RECORDED`] (`Annotated[type, RECORDED]`), in declaration order."""
    hints = get_type_hints(config_class, include_extras=True)
    return tuple(f.name for f in fields(config_class) if RECORDED in getattr(hints.get(f.name), "__metadata__", ()))
