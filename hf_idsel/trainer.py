"""IterativeSelectionTrainer: iterative kMQ (Algorithm 1 of arXiv 2409.11378) inside TRL's SFTTrainer.

`train_dataset` is the whole pool. The trainer embeds and clusters it, draws round 1 with kMQ,
and trains. At the end of every round it scores each cluster from what the model learned,
re-weights the clusters and draws the next round from the rows not chosen yet, all inside one
`train()`: a sampler of fixed length switches to the next round's rows between epochs, so there is
one optimizer, one LR schedule and a continuous global step ("continue" mode, the paper). In
"restart" mode (the research code) the model and optimizer go back to their initial state at
every round and train on everything selected so far.

Every rank holds the same selection: rank 0 clusters and draws, then broadcasts; scores are
gathered from all ranks before the weights move.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from accelerate.utils import broadcast_object_list, gather_object
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from . import sample
from .cards import card_facts, dataset_card, model_card
from .embed import DEFAULT_ENCODER
from .errors import InvalidArgumentError, PushError
from .manifest import Manifest, encoder_record, indices_digest, pool_record, selection_subset
from .publish import ITERATIVE_METHOD, ROUND_COLUMN, STAGING_DIR, push_staged, set_model_push, stage
from .render import first_empty_answer, prompt_and_answer, resolve_render_options, validate_columns
from .rounds import weight_entropy, write_round_file
from .select import cluster_pool, pool_embeddings

logger = logging.getLogger(__name__)

ROW_ID = "hf_idsel_row"
SCORERS = ("loss", "reward", "perplexity", "likelihood", "judge")
WEIGHT_RULES = sample.WEIGHT_RULES
ROUND_MODES = ("continue", "restart")
STATE_FILE = "hf_idsel_selection.json"


@dataclass
class IterativeSelectionConfig(SFTConfig):
    r"""
    Configuration for [`IterativeSelectionTrainer`]: every [`~trl.SFTConfig`] field, plus the selection.
    `train_sampling_strategy` orders each round's rows (`"random"`, `"sequential"` = drawn order, or
    `"group_by_length"`); `"batch_rebalance"` is refused.

    Parameters:
        budget (`float`, *optional*, defaults to `0.1`):
            Rows to select over all rounds: a number above 1 is a row count, a number in (0, 1] a
            fraction of the pool.
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
            How rounds are scored: `"loss"`, `"reward"`, `"perplexity"`, `"likelihood"` or `"judge"`.
        reward_model (`str`, *optional*):
            Reward model id or path for `scorer="reward"` (or pass `reward_model=` to the trainer).
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

    budget: float = field(
        default=0.1,
        metadata={"help": "Rows to select over all rounds: above 1 a row count, in (0, 1] a fraction of the pool."},
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
        metadata={"help": "Round scorer.", "choices": list(SCORERS)},
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
        for name, value, allowed in (
            ("scorer", self.scorer, SCORERS),
            ("weight_update", self.weight_update, WEIGHT_RULES),
            ("round_mode", self.round_mode, ROUND_MODES),
        ):
            if value not in allowed:
                raise InvalidArgumentError(f"`{name}`={value!r}; choose one of {list(allowed)}.")
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
    def budget_value(self) -> int | float:
        """`budget` as `resolve_budget` takes it: an int row count above 1, else a fraction."""
        if self.budget > 1:
            if not float(self.budget).is_integer():
                raise InvalidArgumentError(f"`budget`={self.budget} above 1 is a row count and must be a whole number.")
            return int(self.budget)
        return float(self.budget)

    @property
    def k_value(self) -> int | str:
        if isinstance(self.k, int) or (isinstance(self.k, str) and self.k.isdigit()):
            return int(self.k)
        if self.k != "auto":
            raise InvalidArgumentError(f"`k`={self.k!r} must be an int or 'auto'.")
        return "auto"


class RoundSampler(torch.utils.data.Sampler):
    """Yields the rows of the current round (positions in the prepared dataset) in the order that
    `train_sampling_strategy` asks for, reseeded every epoch.

    Its length is fixed (the largest round) because the Trainer sizes the epoch loop once; a round
    with fewer rows ends its epoch early.

    Args:
        length (`int`):
            Length reported to the Trainer.
        seed (`int`):
            Seed of the order; the same seed and epoch give the same order on every rank.
        strategy (`str`, *optional*, defaults to `"random"`):
            `"random"` (a seeded shuffle), `"sequential"` (the order the rows were drawn in) or
            `"group_by_length"` (transformers' length-grouped shuffle, so batches pad less).
        lengths (`list[int]`, *optional*):
            Token length of every prepared row; needed by `"group_by_length"`.
        batch_size (`int`, *optional*, defaults to `1`):
            Rows per optimizer step, the size of the groups `"group_by_length"` makes.
    """

    def __init__(self, length: int, seed: int, strategy: str = "random", lengths=None, batch_size: int = 1):
        if strategy == "group_by_length" and lengths is None:
            raise InvalidArgumentError("train_sampling_strategy='group_by_length' needs the rows' token lengths.")
        self.length = length
        self.seed = seed
        self.strategy = strategy
        self.lengths = lengths
        self.batch_size = batch_size
        self.positions: list[int] = []
        self.epoch = 0

    def set_rows(self, positions) -> None:
        self.positions = [int(p) for p in positions]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        if self.strategy == "sequential":
            return iter(list(self.positions))
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.strategy == "group_by_length":
            from transformers.trainer_pt_utils import get_length_grouped_indices

            lengths = [int(self.lengths[p]) for p in self.positions]
            order = get_length_grouped_indices(lengths, self.batch_size, generator=generator)
        else:
            order = torch.randperm(len(self.positions), generator=generator).tolist()
        return iter([self.positions[i] for i in order])


class _RowIdCollator:
    """Carries each example's pool row id past the collator, as a tensor the loss can read."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples):
        rows = [example.pop(ROW_ID, -1) for example in examples]
        batch = self.collator(examples)
        batch[ROW_ID] = torch.tensor(rows, dtype=torch.long)
        return batch


class _RoundCallback(TrainerCallback):
    """Closes a round when the last epoch of that round ends."""

    def __init__(self, trainer: "IterativeSelectionTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        # A checkpoint saved on an epoch's last step predates that epoch's end: replay the missed ends.
        steps_per_epoch = state.max_steps // max(int(args.num_train_epochs), 1)
        epochs_trained = state.global_step // steps_per_epoch if steps_per_epoch else 0
        while self.trainer.selection.epochs_done < epochs_trained:
            self.trainer.end_epoch()
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer.end_epoch()
        return control


@dataclass
class SelectionState:
    """The selection's progress: JSON in every checkpoint and round file, never a pickle."""

    k: int
    weights: list
    rounds: list = field(default_factory=list)  # one dict per finished round
    current_round: int = 1
    current_rows: list = field(default_factory=list)  # pool rows of the round in progress
    labels_digest: str = ""
    pending_losses: list = field(default_factory=list)  # [row, loss] gathered for the round in progress
    epochs_done: int = 0

    def selected(self) -> list:
        rows = [r for done in self.rounds for r in done["selected"]]
        return rows + list(self.current_rows)


class IterativeSelectionTrainer(SFTTrainer):
    """[`~trl.SFTTrainer`] that selects its own training data from `train_dataset` in rounds (iterative kMQ).

    Args:
        model (`str` or `PreTrainedModel` or `PeftModel`):
            As in [`~trl.SFTTrainer`].
        args ([`IterativeSelectionConfig`], *optional*):
            Training and selection configuration.
        train_dataset (`datasets.Dataset`):
            The whole pool (chat `messages` or prompt/completion rows); the trainer selects from it.
        reward_model (`str`, `PreTrainedModel` or [`~scorers.RewardScorer`], *optional*):
            Sequence-classification reward model for `scorer="reward"` (a scorer object carries its tokenizer).
        reference_model (`str`, `PreTrainedModel` or [`~scorers.LikelihoodScorer`], *optional*):
            Reference causal LM for `scorer="likelihood"`; defaults to `args.reference_model`.
        judge (`Callable`, *optional*):
            `judge(prompts, completions) -> scores` for `scorer="judge"`.
        score_fn (`Callable`, *optional*):
            Any `(prompts, golds, generations) -> scores`; overrides `args.scorer`.
        **kwargs:
            Every other [`~trl.SFTTrainer`] argument (`eval_dataset`, `processing_class`, `peft_config`, ...).
    """

    def __init__(
        self,
        model,
        args: IterativeSelectionConfig | None = None,
        train_dataset: datasets.Dataset | None = None,
        *,
        reward_model: Any = None,
        reference_model: Any = None,
        judge: Callable | None = None,
        score_fn: Callable | None = None,
        **kwargs,
    ):
        if args is None:
            name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "model")
            args = IterativeSelectionConfig(f"{str(name).split('/')[-1]}-iterative-sft")
        if not isinstance(args, IterativeSelectionConfig):
            raise InvalidArgumentError("`args` must be an IterativeSelectionConfig.")
        if not isinstance(train_dataset, datasets.Dataset):
            raise InvalidArgumentError("`train_dataset` must be a datasets.Dataset holding the whole pool.")
        if train_dataset._indices is not None:
            train_dataset = train_dataset.flatten_indices()
        self.pool = train_dataset
        self.budget_rows, self.round_sizes = self._check_selection_args(args, train_dataset, reward_model, judge, score_fn)
        self.reward_model = reward_model if reward_model is not None else args.reward_model
        self.reference_model = reference_model if reference_model is not None else args.reference_model
        self.judge = judge
        self.score_fn = score_fn

        # The card's license is checked before the Trainer creates any repo or loads anything heavy.
        self._base_model = _model_id(model)
        self._license = self._resolve_license(args) if args.push_to_hub else args.hub_license
        pool_with_ids = train_dataset.add_column(ROW_ID, list(range(len(train_dataset))))
        super().__init__(model, args=args, train_dataset=pool_with_ids, **kwargs)
        self.data_collator = _RowIdCollator(self.data_collator)
        self._set_signature_columns_if_needed()
        self._signature_columns = list(self._signature_columns) + [ROW_ID]

        rows = np.asarray(self.train_dataset[ROW_ID], dtype=np.int64)
        self.position_of_row = np.full(len(self.pool), -1, dtype=np.int64)
        self.position_of_row[rows] = np.arange(len(rows))
        dropped = len(self.pool) - len(rows)
        if dropped:
            logger.warning("%d pool rows were dropped by SFTTrainer's preparation and cannot be selected.", dropped)
        self.trainable = self.position_of_row >= 0
        if self.budget_rows > int(self.trainable.sum()):
            raise InvalidArgumentError(
                f"`budget`={self.budget_rows} rows is more than the {int(self.trainable.sum())} pool rows left after "
                "tokenization; lower the budget."
            )

        self.labels, self.k, self.k_selection = self._cluster_pool()
        self.quality = None
        if args.quality_column is not None:
            values = self.pool.data.table.column(args.quality_column).to_numpy(zero_copy_only=False)
            self.quality = sample.validate_quality(values, args.quality_column)
        self.selection = SelectionState(
            k=self.k, weights=[1.0 / self.k] * self.k, labels_digest=_labels_digest(self.labels)
        )
        self._draw_round(1, weights=None)
        length = max(self.round_sizes) if args.round_mode == "continue" else self.budget_rows
        strategy = args.train_sampling_strategy
        self.round_sampler = RoundSampler(
            length,
            args.selection_seed,
            strategy=strategy,
            lengths=self._token_lengths() if strategy == "group_by_length" else None,
            batch_size=args.train_batch_size * args.gradient_accumulation_steps,
        )
        self._sync_sampler()
        self._round_losses: list = []
        self._forward_outputs = None
        if args.scorer == "loss" and score_fn is None:
            self.model.register_forward_hook(self._keep_forward_outputs)
        self._initial_state = None
        if args.round_mode == "restart":
            self._initial_state = {
                name: p.detach().clone().cpu() for name, p in self.model.named_parameters() if p.requires_grad
            }
        self.add_callback(_RoundCallback(self))
        if args.scorer == "reward" and score_fn is None:
            self._check_reward_model()
        self._pool_info = None

    def _check_reward_model(self) -> None:
        """Load the reward model now and refuse one whose tokenizer cannot encode the pool, before training."""
        from . import scorers

        scorer = self._make_scorer(scorers)
        options = resolve_render_options(self.pool.column_names, tokenizer=self.processing_class)
        rows = np.random.default_rng(self.args.selection_seed).choice(len(self.pool), min(64, len(self.pool)), replace=False)
        texts = [p + a for p, a in (prompt_and_answer(self.pool[int(r)], options, self.processing_class) for r in rows)]
        scorer.check_encodable(texts)

    # ---- set-up ----

    def _token_lengths(self) -> list[int]:
        """Token length of every prepared row: `length_column_name` if the pool has it, else `input_ids`."""
        columns = self.train_dataset.with_format("arrow")  # respects an indices mapping left by filtering
        if self.args.length_column_name in self.train_dataset.column_names:
            return columns[self.args.length_column_name].to_pylist()
        return pc.list_value_length(columns["input_ids"]).to_pylist()

    def _check_selection_args(self, args, pool, reward_model, judge, score_fn):
        if len(pool) == 0:
            raise InvalidArgumentError("`train_dataset` (the pool) is empty.")
        budget = sample.resolve_budget(args.budget_value, len(pool))
        if args.rounds > budget:
            raise InvalidArgumentError(f"`rounds`={args.rounds} is larger than the budget ({budget} rows).")
        sizes = [budget // args.rounds + (1 if r < budget % args.rounds else 0) for r in range(args.rounds)]
        k = args.k_value
        if k != "auto" and not 1 <= k <= len(pool):
            raise InvalidArgumentError(f"`k`={k} must be between 1 and the number of rows ({len(pool)}).")
        if score_fn is None:
            if args.scorer == "reward" and reward_model is None and args.reward_model is None:
                raise InvalidArgumentError(
                    "scorer='reward' needs a reward model: pass `reward_model=` to the trainer or set "
                    "`IterativeSelectionConfig.reward_model`, or choose another scorer (e.g. 'loss')."
                )
            if args.scorer == "judge" and judge is None:
                raise InvalidArgumentError("scorer='judge' needs `judge=` (a callable (prompts, completions) -> scores).")
        self._render = resolve_render_options(pool.column_names, format=None, include_answer=True)
        if self._render.format not in ("messages", "prompt_completion"):
            raise InvalidArgumentError(
                "IterativeSelectionTrainer needs chat `messages` or `prompt`/`completion` rows (a gold answer per row); "
                f"this pool renders as format={self._render.format!r}."
            )
        validate_columns(pool.data.table, self._render)
        if args.scorer != "loss" or score_fn is not None:
            empty = first_empty_answer(pool.data.table, self._render)
            if empty is not None:
                raise InvalidArgumentError(
                    f"scorer={args.scorer!r} compares the gold answer with the model's own, but pool row {empty} has no "
                    "gold completion (no assistant turn or an empty one). Drop such rows or use scorer='loss'."
                )
        if args.quality_column is not None and args.quality_column not in pool.column_names:
            raise InvalidArgumentError(f"`quality_column`={args.quality_column!r} is not a column of the pool.")
        if args.embedding_column is not None and args.embedding_column not in pool.column_names:
            raise InvalidArgumentError(f"`embedding_column`={args.embedding_column!r} is not a column of the pool.")
        return budget, sizes

    def _cluster_pool(self):
        """Every rank embeds its share of the pool; the main process clusters and broadcasts the labels."""
        args = self.args
        embeddings, identity = pool_embeddings(
            self.pool,
            self._render,
            encoder=args.encoder,
            embedding_column=args.embedding_column,
            distributed=self.accelerator.num_processes > 1,
        )
        payload = [None]
        if self.accelerator.is_main_process:
            clustering, k_selection = cluster_pool(embeddings, args.k_value, seed=args.selection_seed)
            encoder = encoder_record(identity, args.embedding_column, embeddings.shape[1])
            payload = [
                {"labels": clustering.labels.tolist(), "k": clustering.k, "k_selection": k_selection, "encoder": encoder}
            ]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(payload, from_process=0)
        data = payload[0]
        self.encoder_info = data["encoder"]
        return np.asarray(data["labels"], dtype=np.int64), int(data["k"]), data["k_selection"]

    # ---- rounds ----

    @property
    def current_round(self) -> int:
        return self.selection.current_round

    def _draw_round(self, round_index: int, weights) -> None:
        """Draw the rows of `round_index` on rank 0 and share them with every rank."""
        payload = [None]
        if self.accelerator.is_main_process:
            eligible = self.trainable.copy()
            eligible[np.asarray(self.selection.selected(), dtype=np.int64)] = False
            rows = sample.kmq_sample(
                self.labels,
                self.round_sizes[round_index - 1],
                k=self.k,
                seed=self.args.selection_seed * 1_000_003 + round_index,
                quality=self.quality,
                temperature=self.args.quality_temperature,
                weights=None if weights is None else np.asarray(weights),
                eligible=eligible,
            )
            payload = [rows.tolist()]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(payload, from_process=0)
        self.selection.current_round = round_index
        self.selection.current_rows = payload[0]

    def _sync_sampler(self) -> None:
        rows = self.selection.current_rows
        if self.args.round_mode == "restart":
            rows = self.selection.selected()
        self.round_sampler.set_rows(self.position_of_row[np.asarray(rows, dtype=np.int64)])

    def _get_train_sampler(self, train_dataset=None):
        return self.round_sampler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rows = inputs.pop(ROW_ID, None)
        collect = rows is not None and self.model.training and self.args.scorer == "loss" and self.score_fn is None
        if not collect:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        # The forward hook hands us the fused head's per-token log-probs: asking SFTTrainer for
        # `return_outputs` instead would cost a second forward pass on every step.
        self._forward_outputs = None
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        outputs, self._forward_outputs = self._forward_outputs, None
        with torch.no_grad():
            position_ids = inputs.get("position_ids") if getattr(self, "padding_free", False) else None
            per_row = _per_row_loss(outputs, inputs["labels"], position_ids, rows=len(rows))
        self._round_losses.extend(zip(rows.tolist(), per_row.tolist()))
        return result

    def _keep_forward_outputs(self, module, args, output) -> None:
        self._forward_outputs = output

    def end_epoch(self) -> None:
        """Count a finished epoch; the last epoch of a round closes the round."""
        self.selection.epochs_done += 1
        if self.selection.epochs_done % self.args.epochs_per_round == 0 and self.current_round <= self.args.rounds:
            self.finish_round()

    def finish_round(self) -> None:
        """Score the finished round, update the cluster weights, write the round file, draw the next round."""
        r = self.current_round
        rows = np.asarray(self.selection.current_rows, dtype=np.int64)
        from .scorers import cluster_scores as mean_per_cluster

        scored = r < self.args.rounds or self.args.score_last_round
        if scored:
            scored_rows, scores = self._score_round(rows)
        else:
            scored_rows, scores = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        # No scores (NaN per cluster) keep every weight; only clusters with no rows left drop to 0.
        cluster_scores = mean_per_cluster(self.labels, scored_rows, scores, self.k)
        available = np.bincount(self.labels[self.trainable], minlength=self.k) - np.bincount(
            self.labels[np.asarray(self.selection.selected(), dtype=np.int64)], minlength=self.k
        )
        weights = sample.update_weights(
            np.asarray(self.selection.weights),
            cluster_scores,
            rule=self.args.weight_update,
            temperature=self.args.weight_temperature,
            available=available,
        )
        record = {
            "round": r,
            "weights": weights.tolist(),
            "cluster_scores": [None if math.isnan(s) else float(s) for s in cluster_scores],
            "selected": rows.tolist(),
            "selected_per_cluster": np.bincount(self.labels[rows], minlength=self.k).tolist(),
            "cumulative_size": len(self.selection.selected()),
            "scorer": "callable" if self.score_fn is not None else self.args.scorer,
            "scored": bool(scored),
            "scored_rows": int(len(scored_rows)),
            "global_step": int(self.state.global_step),
            "k": int(self.k),
            "k_selection": self.k_selection,
        }
        self.selection.rounds.append(record)
        self.selection.weights = weights.tolist()
        self.selection.current_rows = []
        self.selection.pending_losses = []
        self._round_losses = []
        self._write_round_file(record)
        self.log(_round_metrics(record, scores))
        if self.args.push_to_hub and self.accelerator.is_main_process:
            self._push_round(record)
        if r < self.args.rounds:
            self._draw_round(r + 1, weights)
            if self.args.round_mode == "restart":
                self._restart_model()
            self._sync_sampler()
        else:
            self.selection.current_round = r + 1

    def _score_round(self, rows: np.ndarray):
        """Per-row scores S for this round (high = the gold answer still beats the model), from all ranks."""
        if self.score_fn is None and self.args.scorer == "loss":
            gathered = gather_object(list(self._round_losses)) if self.accelerator.num_processes > 1 else self._round_losses
            merged = {int(row): float(loss) for row, loss in list(self.selection.pending_losses) + list(gathered)}
            scored = np.asarray(sorted(merged), dtype=np.int64)
            return scored, np.asarray([merged[r] for r in scored], dtype=np.float64)
        return self._score_by_generation(rows)

    def _score_by_generation(self, rows: np.ndarray):
        from . import scorers

        args = self.args
        seed = args.selection_seed * 1_000_003 + self.current_round
        scored = scorers.sample_rows_per_cluster(self.labels, rows, args.scored_rows_per_cluster, seed=seed)
        world = self.accelerator.num_processes
        mine = scored[self.accelerator.process_index :: world]
        if world > 1 and len(scored):
            # Equal shares (a repeated row; its score is the same) so a sharded model (ZeRO-3/FSDP)
            # runs the same number of forward passes on every rank.
            share = -(-len(scored) // world)
            mine = np.concatenate([mine, np.repeat(scored[:1], share - len(mine))])
        tokenizer = self.processing_class
        options = resolve_render_options(self.pool.column_names, tokenizer=tokenizer)
        pairs = [prompt_and_answer(self.pool[int(r)], options, tokenizer) for r in mine]
        prompts, golds = [p for p, _ in pairs], [g for _, g in pairs]
        scorer = self._make_scorer(scorers)
        generations = None
        model = self.accelerator.unwrap_model(self.model)
        if scorer.needs_generation and prompts:
            generations = scorers.generate_answers(
                model,
                tokenizer,
                prompts,
                max_new_tokens=args.generation_max_new_tokens,
                batch_size=args.scoring_batch_size,
                show_progress=self.accelerator.is_main_process,
                synced_gpus=world > 1 and self._model_is_sharded(),
            )
        if hasattr(scorer, "bind"):
            scorer.bind(model, tokenizer)
        values = scorer(prompts, golds, generations).tolist() if prompts else []
        local = list(zip(mine.tolist(), values))
        gathered = gather_object(local) if self.accelerator.num_processes > 1 else local
        merged = dict(gathered)
        order = np.asarray(sorted(merged), dtype=np.int64)
        return order, np.asarray([merged[r] for r in order], dtype=np.float64)

    def _model_is_sharded(self) -> bool:
        from transformers.integrations import is_deepspeed_zero3_enabled

        return bool(is_deepspeed_zero3_enabled() or getattr(self, "is_fsdp_enabled", False))

    def _make_scorer(self, scorers):
        args = self.args
        if self.score_fn is not None:
            return scorers.CallableScorer(self.score_fn)
        show = self.accelerator.is_main_process
        if args.scorer == "reward":
            if not isinstance(self.reward_model, scorers.RewardScorer):
                self.reward_model = scorers.RewardScorer(
                    self.reward_model, batch_size=args.scoring_batch_size, show_progress=show, device=self.accelerator.device
                )
            return self.reward_model
        if args.scorer == "perplexity":
            return scorers.PerplexityScorer(batch_size=args.scoring_batch_size, show_progress=show)
        if args.scorer == "likelihood":
            if not isinstance(self.reference_model, scorers.LikelihoodScorer):
                self.reference_model = scorers.LikelihoodScorer(
                    self.reference_model, batch_size=args.scoring_batch_size, show_progress=show, device=self.accelerator.device
                )
            return self.reference_model
        return scorers.JudgeScorer(self.judge)

    def _restart_model(self) -> None:
        """'restart' mode: the trainable weights and the optimizer go back to where training began."""
        with torch.no_grad():
            for name, parameter in self.model.named_parameters():
                if name in self._initial_state:
                    parameter.copy_(self._initial_state[name].to(parameter.device))
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        if optimizer is not None:
            optimizer.state.clear()

    # ---- state on disk ----

    def _write_round_file(self, record: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        write_round_file(os.path.join(self.args.output_dir, "selection"), record)

    # ---- publishing ----

    @property
    def staging_dir(self) -> str:
        """Where the selection is staged before any upload (left out of the model repo by its leading `_`)."""
        return os.path.join(self.args.output_dir, STAGING_DIR)

    @property
    def hub_dataset_id(self) -> str:
        if self.args.hub_dataset_id:
            return self.args.hub_dataset_id
        model_id = self.hub_model_id or self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
        return f"{model_id}-selection"

    def _pool_record(self) -> dict:
        if self._pool_info is None:
            columns = list(self._render.input_columns)
            columns += [c for c in (self.args.embedding_column, self.args.quality_column) if c is not None]
            source = {"path": self.args.pool_id, "split": str(self.pool.split or "train")} if self.args.pool_id else None
            self._pool_info = pool_record(self.pool, columns, name=self.args.pool_id, source=source)
        return self._pool_info

    def selection_manifest(self, config: str = "default") -> Manifest:
        """The manifest of one round's rows (`"round_<r>"`) or of every row selected so far (`"default"`)."""
        done = self.selection.rounds
        if config == "default":
            rows, what = self.selection.selected(), {"rounds": [r["round"] for r in done]}
        else:
            match = re.fullmatch(r"round_(\d+)", config)
            if not match or not 1 <= int(match.group(1)) <= len(done):
                finished = [f"round_{r['round']}" for r in done]
                raise InvalidArgumentError(f"`config`={config!r}: the finished rounds are {finished} (or 'default').")
            rows, what = done[int(match.group(1)) - 1]["selected"], {"round": int(match.group(1))}
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        selected_labels = self.labels[rows]
        a = self.args
        arguments = {
            name: getattr(a, name)
            for name in (
                "budget", "rounds", "k", "encoder", "embedding_column", "quality_column", "quality_temperature",
                "scorer", "weight_update", "weight_temperature", "scored_rows_per_cluster", "epochs_per_round",
                "round_mode", "selection_seed", "pool_id",
            )
        }
        return Manifest(
            pool=self._pool_record(),
            arguments=arguments,
            method=ITERATIVE_METHOD,
            seed=int(a.selection_seed),
            k=int(self.k),
            k_selection=self.k_selection,
            budget={"requested": a.budget_value, "rows": int(len(rows)), "total_rows": int(self.budget_rows), **what},
            cluster_sizes=np.bincount(self.labels, minlength=self.k).tolist(),
            selected_per_cluster=np.bincount(selected_labels, minlength=self.k).tolist(),
            selected_indices=rows.tolist(),
            selected_clusters=selected_labels.tolist(),
            selected_digest=indices_digest(rows),
            render=self._render.to_dict(),
            encoder=self.encoder_info,
        )

    def _selection_rows(self, manifest: Manifest) -> datasets.Dataset:
        round_of = {row: r["round"] for r in self.selection.rounds for row in r["selected"]}
        rounds = [round_of[row] for row in manifest.selected_indices]
        return selection_subset(self.pool, manifest.selected_indices, manifest.selected_clusters, **{ROUND_COLUMN: rounds})

    def _stage_selection(self, configs: list[str]) -> None:
        """Write the rows, manifests, round files, plot and card of `configs` under `staging_dir` (main process)."""
        manifests = {name: self.selection_manifest(name) for name in configs}
        everything = self.selection_manifest("default")
        all_configs = [f"round_{r['round']}" for r in self.selection.rounds] + ["default"]
        card = dataset_card(
            everything,
            card_facts(self.hub_dataset_id, self.args.pool_id, self.args.hub_token),
            configs=all_configs,
            rounds=self.selection.rounds,
            run_args={"scorer": self.args.scorer, "weight_update": self.args.weight_update},
        )
        stage(
            self.staging_dir, self.hub_dataset_id,
            subsets={name: self._selection_rows(m) for name, m in manifests.items()},
            manifests=manifests, card=card, rounds=self.selection.rounds,
            private=self.args.hub_private_repo, plot_manifest=everything,
        )

    def _push_round(self, record: dict) -> None:
        """Stage and push one finished round; a failure here only warns, the final push retries it."""
        self._stage_selection([f"round_{record['round']}"])
        try:
            push_staged(self.staging_dir, token=self.args.hub_token, include_model=False)
        except PushError as err:
            logger.warning("Round %d's rows were not pushed yet (training goes on): %s", record["round"], err)

    def _resolve_license(self, args) -> str:
        if args.hub_license:
            return args.hub_license
        base = self._base_model
        if base:
            from huggingface_hub import ModelCard

            try:
                license_ = ModelCard.load(base, token=args.hub_token).data.get("license")
            except Exception as err:
                logger.info("Could not read the base model's card %s (%s).", base, type(err).__name__)
                license_ = None
            if license_:
                return license_
        raise InvalidArgumentError(
            "`push_to_hub=True` needs a license for the model card: set `hub_license` (e.g. 'apache-2.0'; "
            f"the base model {base or '(a local path)'} has no readable card to take it from)."
        )

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None):
        """Write the model card from hf_idsel's `model_cards/model_card.md` (TRL reads only its own templates)."""
        if not self.is_world_process_zero():
            return
        a = self.args
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        hyperparameters = [
            ("learning_rate", a.learning_rate),
            ("per_device_train_batch_size", a.per_device_train_batch_size),
            ("gradient_accumulation_steps", a.gradient_accumulation_steps),
            ("processes", self.accelerator.num_processes),
            ("epochs (rounds x epochs_per_round)", a.num_train_epochs),
            ("lr_scheduler_type", getattr(a.lr_scheduler_type, "value", a.lr_scheduler_type)),
            ("warmup_steps", a.warmup_steps),
            ("optimizer", getattr(a.optim, "value", a.optim)),
            ("max_length", a.max_length),
            ("seed", a.seed),
            ("budget (rows)", self.budget_rows),
            ("rounds", a.rounds),
            ("k", self.k),
            ("scorer", a.scorer),
            ("weight_update / temperature", f"{a.weight_update} / {a.weight_temperature}"),
            ("round_mode", a.round_mode),
            ("global steps", self.state.global_step),
        ]
        peft_config = getattr(self.model, "peft_config", None)
        if peft_config:
            lora = next(iter(peft_config.values()))
            hyperparameters.append(("peft", f"{type(lora).__name__} r={getattr(lora, 'r', '?')} alpha={getattr(lora, 'lora_alpha', '?')}"))
        card = model_card(
            self.selection_manifest("default"),
            model_name=model_name or os.path.basename(os.path.abspath(a.output_dir)),
            base_model=self._base_model,
            dataset_id=dataset_name,
            license=self._license,
            tags=tags + list(self._tag_names),
            library_name="peft" if peft_config else "transformers",
            rounds=self.selection.rounds,
            run_args={n: getattr(a, n) for n in ("quality_column", "scorer", "weight_update", "round_mode")},
            hyperparameters=hyperparameters,
            pool_id=a.pool_id,
        )
        card.save(os.path.join(a.output_dir, "README.md"))

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, token=None, revision=None, private=None, **kwargs):
        """Push the selection (dataset repo `hub_dataset_id`: a config per round and the default), then the model.

        Everything is staged under `output_dir` first; on failure [`PushError`] says what is left and
        `hf-idsel push OUTPUT_DIR` finishes it. Always blocking.
        """
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        pending = [f"round_{r['round']}" for r in self.selection.rounds]
        self._stage_selection(pending + ["default"])
        model_name = kwargs.pop("model_name", None) or self.hub_model_id.split("/")[-1]
        self.create_model_card(model_name=model_name, dataset_name=kwargs.pop("dataset_name", None) or self.hub_dataset_id, **kwargs)
        self._finish_current_push()
        set_model_push(self.staging_dir, self.hub_model_id, self.args.output_dir, commit_message=commit_message, revision=revision or self.args.hub_revision)
        return push_staged(self.staging_dir, token=token, private=private if private is not None else self.args.hub_private_repo)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        # Losses of the round in progress live on every rank: collect them so a resume scores the same round.
        losses = gather_object(list(self._round_losses)) if self.accelerator.num_processes > 1 else self._round_losses
        if not self.accelerator.is_main_process:
            return
        state = copy.deepcopy(self.selection)
        state.pending_losses = [list(x) for x in list(self.selection.pending_losses) + list(losses)]
        folder = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
        with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(state.__dict__, f)

    def train(self, resume_from_checkpoint=None, **kwargs):
        if resume_from_checkpoint:
            from transformers.trainer_utils import get_last_checkpoint

            folder = resume_from_checkpoint
            if folder is True:
                folder = get_last_checkpoint(self.args.output_dir)
            path = os.path.join(folder, STATE_FILE) if folder else None
            if not path or not os.path.isfile(path):
                raise InvalidArgumentError(
                    f"`resume_from_checkpoint`: {folder!r} holds no {STATE_FILE}; it was not written by IterativeSelectionTrainer."
                )
            with open(path, encoding="utf-8") as f:
                state = SelectionState(**json.load(f))
            if state.labels_digest != self.selection.labels_digest:
                raise InvalidArgumentError(
                    "The checkpoint was made with a different clustering of the pool (different pool, encoder, k or seed)."
                )
            # Every rank restores the gathered losses on rank 0 only, so the round's final gather counts each once.
            if not self.accelerator.is_main_process:
                state.pending_losses = []
            self.selection = state
            self._round_losses = []
            self._sync_sampler()
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        if self.accelerator.is_main_process and self.selection.rounds:
            # Everything a later `hf-idsel push OUTPUT_DIR` needs is on disk, pushed or not.
            self._stage_selection([f"round_{r['round']}" for r in self.selection.rounds] + ["default"])
            if self.args.hub_model_id:
                set_model_push(self.staging_dir, self.args.hub_model_id, self.args.output_dir)
        return output


def _per_row_loss(outputs, labels: torch.Tensor, position_ids: torch.Tensor | None = None, rows: int | None = None) -> torch.Tensor:
    """Mean next-token loss of each row's answer tokens (labels != -100).

    A padding-free batch is one flattened sequence whose `position_ids` restart at 0 for every
    example: pass them with the number of examples (`rows`) to split the losses back per example.
    """
    log_probs = getattr(outputs, "log_probs", None)
    if log_probs is not None and getattr(outputs, "label_mask", None) is not None:
        mask = outputs.label_mask.float()
        token_loss = -log_probs.float() * mask
    else:
        logits = outputs.logits[:, :-1, :].float()
        targets = labels[:, 1:]
        mask = (targets != -100).float()
        token_loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets.clamp(min=0).reshape(-1), reduction="none"
        ).view_as(mask) * mask
    if position_ids is None:
        return token_loss.sum(-1) / mask.sum(-1).clamp(min=1)
    # Example of each target token (targets are shifted by one); trailing padding restarts at 0 too,
    # but its labels are -100, so clamping it into the last example adds nothing.
    example = (torch.cumsum((position_ids[0] == 0).long(), 0)[1:] - 1).clamp(max=rows - 1).to(token_loss.device)
    sums = token_loss.new_zeros(rows).index_add_(0, example, token_loss[0])
    counts = mask.new_zeros(rows).index_add_(0, example, mask[0])
    return sums / counts.clamp(min=1)


def _model_id(model) -> str | None:
    """The Hub id a model was loaded from (`None` for a local folder or a model built in memory)."""
    if isinstance(model, str):
        name = model
    else:
        name = getattr(getattr(model, "config", None), "_name_or_path", None)
        peft_config = getattr(model, "peft_config", None)
        if peft_config:
            name = getattr(next(iter(peft_config.values())), "base_model_name_or_path", None) or name
    return name if name and not os.path.isdir(name) else None


def _labels_digest(labels: np.ndarray) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(np.asarray(labels, dtype="<i8").tobytes()).hexdigest()


def _round_metrics(record: dict, scores: np.ndarray) -> dict:
    return {
        "selection/round": float(record["round"]),
        "selection/weight_entropy": weight_entropy(record["weights"]),
        "selection/score_mean": float(np.mean(scores)) if len(scores) else float("nan"),
        "selection/score_std": float(np.std(scores)) if len(scores) else float("nan"),
        "selection/rows_selected": float(len(record["selected"])),
        "selection/cumulative_size": float(record["cumulative_size"]),
    }
