"""IterativeSelectionConfig: the training arguments of IterativeSelectionTrainer (every SFTConfig
field) plus how the data is selected."""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field

from trl import SFTConfig

from .checks import check_choice, check_flag, check_int, check_model, check_name, check_number, check_seed
from .embed import DEFAULT_ENCODER
from .errors import InvalidArgumentError
from .rounds import ROUND_MODES, WEIGHT_RULES, round_sizes
from .sample import check_budget, parse_budget, resolve_budget
from .scorers import SCORERS


# The fields a manifest records: what decides which rows an iterative run selects.
_RECORDED_ARGUMENTS = (
    "budget", "rounds", "k", "encoder", "embedding_column", "quality_column", "quality_temperature", "scorer",
    "weight_update", "weight_temperature", "scored_rows_per_cluster", "epochs_per_round", "round_mode",
    "selection_seed", "pool_id",
)


def _parse_k(k) -> int | str:
    """`k` (`"auto"`, an int, or an int as a string from the command line) as `"auto"` or an int >= 1."""
    if isinstance(k, str) and k == "auto":
        return "auto"
    if isinstance(k, str):
        if not k.isdecimal():
            raise InvalidArgumentError(f"`k`={k!r} must be an int or 'auto'.")
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
            Number of clusters, or `"auto"` (silhouette score on a sample).
        encoder (`str`, *optional*, defaults to `"sentence-transformers/all-MiniLM-L6-v2"`):
            Sentence encoder id or path (the default resolves to the packaged offline copy).
        embedding_column (`str`, *optional*):
            Precomputed vectors to cluster instead of running the encoder.
        quality_column (`str`, *optional*):
            Per-row quality for the draw inside a cluster (kMQ).
        quality_temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature of the in-cluster draw.
        scorer (`str`, *optional*, defaults to `"loss"`):
            How rounds are scored, by name: `"loss"`, `"reward"`, `"perplexity"` or `"likelihood"`
            (see `hf_idsel/scorers.py`). A scorer object (e.g. `JudgeScorer(judge)`) or a callable goes
            to the trainer's `scorer=` argument instead, which overrides this field.
        reward_model (`str`, *optional*):
            Reward model id or path for `scorer="reward"`.
        reference_model (`str`, *optional*, defaults to `"HuggingFaceTB/SmolLM2-135M-Instruct"`):
            Reference causal LM for `scorer="likelihood"`.
        weight_update (`str`, *optional*, defaults to `"paper"`):
            `"paper"`: new weight ~ softmax(score / T) x old weight; `"research"`: softmax(score / T) alone.
        weight_temperature (`float`, *optional*, defaults to `1.0`):
            Temperature T of the weight update.
        scored_rows_per_cluster (`int`, *optional*, defaults to `8`):
            Rows of each cluster scored by generation scorers per round (0 = all trained rows; negative
            values are refused).
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
            `"continue"` (the paper) or `"restart"` (the research code).
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

    budget: Budget = field(
        default=0.1,
        metadata={"help": "Rows to select over all rounds: an int is a row count, a float in (0, 1] a fraction of the pool."},
    )
    rounds: int = field(default=3, metadata={"help": "Selection rounds; each draws budget / rounds new rows."})
    k: str = field(default="auto", metadata={"help": "Number of clusters, or 'auto' (silhouette on a sample)."})
    encoder: str = field(default=DEFAULT_ENCODER, metadata={"help": "Sentence encoder id or path."})
    embedding_column: str | None = field(
        default=None, metadata={"help": "Column of precomputed vectors to cluster instead of running the encoder."}
    )
    quality_column: str | None = field(
        default=None, metadata={"help": "Per-row quality column for the draw inside a cluster (kMQ)."}
    )
    quality_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the in-cluster draw."})
    scorer: str = field(
        default="loss",
        metadata={
            "help": f"Round scorer by name: one of {list(SCORERS)} (objects and callables go to the trainer's `scorer=`)."
        },
    )
    reward_model: str | None = field(default=None, metadata={"help": "Reward model id or path for scorer='reward'."})
    reference_model: str = field(
        default="HuggingFaceTB/SmolLM2-135M-Instruct",
        metadata={"help": "Reference causal LM for scorer='likelihood'."},
    )
    weight_update: str = field(
        default="paper",
        metadata={"help": "Cluster weight rule: 'paper' (x old weight) or 'research'.", "choices": list(WEIGHT_RULES)},
    )
    weight_temperature: float = field(default=1.0, metadata={"help": "Temperature of the weight update softmax."})
    scored_rows_per_cluster: int = field(
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
    epochs_per_round: int = field(default=1, metadata={"help": "Passes over each round's rows."})
    round_mode: str = field(
        default="continue",
        metadata={"help": "'continue' (paper) or 'restart' (research code).", "choices": list(ROUND_MODES)},
    )
    selection_seed: int | None = field(default=None, metadata={"help": "Seed of clustering and draws (default: seed)."})
    pool_id: str | None = field(
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

    def _check_selection_fields(self) -> None:
        """The type and range of every selection field, before anything is loaded; numbers become Python numbers."""
        self.budget = parse_budget(self.budget)
        check_budget(self.budget)
        self.budget = int(self.budget) if isinstance(self.budget, numbers.Integral) else float(self.budget)
        self.rounds = check_int(self.rounds, "rounds", minimum=1)
        self.epochs_per_round = check_int(self.epochs_per_round, "epochs_per_round", minimum=1)
        k = _parse_k(self.k)
        if not isinstance(self.k, str):
            self.k = k  # numpy ints as Python ints: manifests record `k`
        self.encoder = os.fspath(check_model(self.encoder, "encoder", loaded=False))
        for name in ("embedding_column", "quality_column", "reward_model", "pool_id", "hub_dataset_id", "hub_license"):
            check_name(getattr(self, name), name)
        check_name(self.reference_model, "reference_model", optional=False)
        self.quality_temperature = check_number(self.quality_temperature, "quality_temperature", above=0)
        self.weight_temperature = check_number(self.weight_temperature, "weight_temperature", above=0)
        if not isinstance(self.scorer, str):
            raise InvalidArgumentError(
                f"`scorer`={self.scorer!r}: the config takes a scorer's name ({list(SCORERS)}); pass a scorer "
                "object or a callable to IterativeSelectionTrainer's `scorer=` instead."
            )
        check_choice(self.weight_update, "weight_update", WEIGHT_RULES)
        check_choice(self.round_mode, "round_mode", ROUND_MODES)
        self.scored_rows_per_cluster = check_int(
            self.scored_rows_per_cluster, "scored_rows_per_cluster", minimum=0, fix=" 0 scores every trained row."
        )
        for name in ("generation_max_new_tokens", "scoring_batch_size"):
            setattr(self, name, check_int(getattr(self, name), name, minimum=1))
        self.score_last_round = check_flag(self.score_last_round, "score_last_round")
        if self.round_eval_tasks:
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
        """`k` as an int, or `"auto"`."""
        return _parse_k(self.k)

    def selection_arguments(self) -> dict:
        """The selection fields as an iterative run's manifests record them under `arguments`."""
        return {name: getattr(self, name) for name in _RECORDED_ARGUMENTS}

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
        if k != "auto" and not 1 <= k <= len(pool):
            raise InvalidArgumentError(f"`k`={k} must be between 1 and the number of pool rows ({len(pool)}).")
        for name in ("quality_column", "embedding_column"):
            column = getattr(self, name)
            if column is not None and column not in pool.column_names:
                raise InvalidArgumentError(f"`{name}`={column!r} is not a column of the pool (columns: {pool.column_names}).")
        return budget, sizes
