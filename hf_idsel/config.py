"""IterativeSelectionConfig: the training arguments of IterativeSelectionTrainer (every SFTConfig
field) plus how the data is selected."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

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


class Budget:
    """Command-line type of `budget`: "64" is 64 rows, "0.1" and "1.0" are fractions of the pool
    (`sample.parse_budget`); a class, because `HfArgumentParser` takes the field's annotation as the type."""

    def __new__(cls, value):
        return parse_budget(value)


@dataclass
class IterativeSelectionConfig(SFTConfig):
    r"""
    Configuration for [`IterativeSelectionTrainer`]: every [`~trl.SFTConfig`] field, plus the selection.
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
            Rows of each cluster scored by generation scorers per round (0 = all trained rows).
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
            Seed of clustering and draws; defaults to `seed`.
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

    def __post_init__(self):
        if self.rounds < 1:
            raise InvalidArgumentError(f"`rounds`={self.rounds} must be at least 1.")
        if self.epochs_per_round < 1:
            raise InvalidArgumentError(f"`epochs_per_round`={self.epochs_per_round} must be at least 1.")
        if self.scorer not in SCORERS:
            raise InvalidArgumentError(
                f"`scorer`={self.scorer!r}; choose one of {list(SCORERS)}. A judge or any other scorer is a Python "
                "object: pass `scorer=JudgeScorer(judge)` (or a callable) to IterativeSelectionTrainer."
            )
        for name, value, allowed in (
            ("weight_update", self.weight_update, WEIGHT_RULES),
            ("round_mode", self.round_mode, ROUND_MODES),
        ):
            if value not in allowed:
                raise InvalidArgumentError(f"`{name}`={value!r}; choose one of {list(allowed)}.")
        self.budget = parse_budget(self.budget)
        check_budget(self.budget)
        if self.scorer == "reward" and not self.reward_model:
            raise InvalidArgumentError(
                "`scorer`='reward' needs `reward_model` (a sequence-classification reward model id or path), "
                "or pass `scorer=RewardScorer(model, tokenizer)` to the trainer and leave this field alone."
            )
        if self.weight_temperature <= 0 or self.quality_temperature <= 0:
            raise InvalidArgumentError("`weight_temperature` and `quality_temperature` must be positive.")
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
        if self.selection_seed is None:
            self.selection_seed = self.seed
        super().__post_init__()

    @property
    def k_value(self) -> int | str:
        if isinstance(self.k, int) or (isinstance(self.k, str) and self.k.isdigit()):
            return int(self.k)
        if self.k != "auto":
            raise InvalidArgumentError(f"`k`={self.k!r} must be an int or 'auto'.")
        return "auto"

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
