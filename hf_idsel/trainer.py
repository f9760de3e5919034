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
import dataclasses
import logging
import math
import os
from typing import Callable

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from accelerate.utils import gather_object
from transformers import TrainerCallback
from trl import SFTTrainer

from . import sample
from .arguments import evaluation_dataset
from .cards import base_model_id, base_model_license, run_dataset_card, save_model_card, trainer_model_card_facts
from .checkpoint import STATE_FILE, check_steps, load_state, selection_plan, write_state
from .config import IterativeSelectionConfig
from .decontaminate import (
    DEFAULT_COSINE_THRESHOLD,
    DEFAULT_NGRAM,
    DEFAULT_NGRAM_THRESHOLD,
    DecontaminationSettings,
    exclude_render_options,
)
from .describe import short_terms
from .distributed import broadcast, equal_share
from .errors import InvalidArgumentError, PushError
from .evaluation import check_round_evaluation, evaluate_round
from .hidden_states import HiddenStateEncoder
from .hub import model_repo_creation, push_folder
from .hub_layout import DEFAULT_CONFIG, ITERATIVE_METHOD, round_config, selection_repo_id, staging_folder
from .manifest import Manifest, encoder_record, pool_record
from .pipeline import decontaminate_and_cluster, pool_embeddings
from .publish import set_model_push, stage_run
from .render import prompt_and_answer, prompt_turns, resolve_render_options, training_render_options
from .round_sampler import ROW_ID, RoundSampler, RowIdCollator
from .rounds import (
    SelectionState,
    close_round,
    draw_round,
    round_metrics,
    round_summary,
    selection_manifest,
    target_prior,
    write_round_file,
)
from .scorers import RoundScorer, ScoringContext, as_scorer, gold_answers_needed, per_row_loss, scorer_name
from .target import check_trainer_target, trainer_target_record

__all__ = ["IterativeSelectionConfig", "IterativeSelectionTrainer"]

logger = logging.getLogger(__name__)

class _RoundCallback(TrainerCallback):
    """Closes a round when the last epoch of that round ends."""

    def __init__(self, trainer: "IterativeSelectionTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.trainer._resumed_by_global_step:
            return control
        # A checkpoint from before epoch ends were recorded, saved on an epoch's last step, predates that
        # epoch's end, which Trainer's own count then skips: replay the missed ends (the planned epoch
        # lengths say where each epoch ended).
        epochs_trained = int(np.searchsorted(np.cumsum(self.trainer._epoch_steps), state.global_step, side="right"))
        while self.trainer.selection.epochs_done < epochs_trained:
            self.trainer.end_epoch()
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer.end_epoch()
        return control


class IterativeSelectionTrainer(SFTTrainer):
    """[`~trl.SFTTrainer`] that selects its own training data from `train_dataset` in rounds (iterative kMQ).

    Args:
        model (`str` or `PreTrainedModel` or `PeftModel`):
            As in [`~trl.SFTTrainer`].
        args ([`IterativeSelectionConfig`], *optional*):
            Training and selection configuration.
        train_dataset (`datasets.Dataset`):
            The whole pool (chat `messages` or prompt/completion rows); the trainer selects from it.
        scorer (`str`, [`~scorers.RoundScorer`] or `Callable`, *optional*):
            How each round is scored: a name from [`~scorers.SCORERS`] (built from `args`), a scorer
            object such as `RewardScorer(model, tokenizer)` or `JudgeScorer(judge)`, or any function
            `(prompts, golds, generations) -> scores`. Defaults to `args.scorer`.
        exclude_dataset (`datasets.Dataset` or `list[str]`, *optional*):
            An evaluation set (often the `eval_dataset`): pool rows that copy or nearly copy one of its items are left
            out of k-means and never drawn, as with `diverse_select(..., exclude=...)`; what was dropped is in
            `trainer.decontamination` and in the run's manifests and cards.
        exclude_ngram (`int`, *optional*, defaults to `8`):
            Word n-gram length of the overlap test against `exclude_dataset`.
        exclude_ngram_threshold (`float`, *optional*, defaults to `0.6`):
            Drop a pool row holding at least this share of one evaluation item's distinct n-grams; `None` skips the test.
        exclude_cosine_threshold (`float`, *optional*, defaults to `0.99`):
            Drop a pool row whose embedding cosine to an evaluation item is at least this; `None` skips the test.
        target_dataset (`datasets.Dataset` or `list[str]`, *optional*):
            Examples of the tasks to train for: every round's quotas are multiplied by each cluster's affinity to them
            ** `args.target_sharpness`, so round 1 draws `diverse_select(..., target_dataset=...)`'s kMQ quotas
            ([`~target`]); never an item of `exclude_dataset`. Recorded in the run's manifests, plan and cards.
        **kwargs:
            Every other [`~trl.SFTTrainer`] argument (`eval_dataset`, `processing_class`, `peft_config`, ...).
    """

    def __init__(
        self,
        model,
        args: IterativeSelectionConfig | None = None,
        train_dataset: datasets.Dataset | None = None,
        *,
        scorer: str | RoundScorer | Callable | None = None,
        exclude_dataset=None,
        exclude_ngram: int = DEFAULT_NGRAM,
        exclude_ngram_threshold: float | None = DEFAULT_NGRAM_THRESHOLD,
        exclude_cosine_threshold: float | None = DEFAULT_COSINE_THRESHOLD,
        target_dataset=None,
        **kwargs,
    ):
        if args is None:
            name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "model")
            args = IterativeSelectionConfig(f"{str(name).split('/')[-1]}-iterative-sft")
        if not isinstance(args, IterativeSelectionConfig):
            raise InvalidArgumentError("`args` must be an IterativeSelectionConfig.")
        if not isinstance(train_dataset, datasets.Dataset):
            raise InvalidArgumentError("`train_dataset` must be a datasets.Dataset holding the whole pool.")
        if ROW_ID in train_dataset.column_names:
            raise InvalidArgumentError(
                f"`train_dataset` already has a column {ROW_ID!r}, the column IterativeSelectionTrainer adds to trace "
                f"every row back to the pool: rename it first, e.g. `pool.rename_column({ROW_ID!r}, 'parent_row')`."
            )
        if train_dataset._indices is not None:
            train_dataset = train_dataset.flatten_indices()
        self.pool = train_dataset
        scorer = args.scorer if scorer is None else scorer
        self.budget_rows, self.round_sizes = self._check_selection_args(args, train_dataset, scorer)
        # Bad thresholds (with or without `exclude_dataset`, as in diverse_select) or evaluation sets: refused now.
        self._decontamination = DecontaminationSettings.from_arguments(exclude_ngram, exclude_ngram_threshold, exclude_cosine_threshold)
        if exclude_dataset is not None:
            exclude_render_options(evaluation_dataset(exclude_dataset), self._render)
        target_dataset = check_trainer_target(
            target_dataset, exclude_dataset, self._render, task_column=args.target_task_column, embedding_column=args.embedding_column
        )

        # The card's license is checked before the Trainer creates any repo or loads anything heavy (a base model card
        # read under Hub timeouts; the repo creation of `Trainer.__init__` below too, a stall ending in PushError).
        self._base_model = base_model_id(model)
        self._license = base_model_license(self._base_model, args.hub_license, args.hub_token) if args.push_to_hub else args.hub_license
        self.scorer = as_scorer(scorer, args, device=args.device, show_progress=args.process_index == 0)
        self.scorer_name = scorer_name(self.scorer)
        pool_with_ids = train_dataset.add_column(ROW_ID, list(range(len(train_dataset))))
        with model_repo_creation(args.push_to_hub, args.hub_token):
            super().__init__(model, args=args, train_dataset=pool_with_ids, **kwargs)
        # Before the pool is embedded: a scorer that cannot serve this run refuses it here.
        self.scorer.prepare(self._scoring_context(self.model))
        self.data_collator = RowIdCollator(self.data_collator)
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

        self._exclude, self._target = exclude_dataset, target_dataset
        self.decontamination = None
        self.labels, self.k, self.k_selection = self._cluster_pool()
        if self.decontamination is not None:
            # Rows matching the evaluation set were left out of k-means and are never drawn.
            self.trainable[self.decontamination["removed_indices"]] = False
            if self.budget_rows > int(self.trainable.sum()):
                raise InvalidArgumentError(
                    f"`budget`={self.budget_rows} rows is more than the {int(self.trainable.sum())} pool rows left after "
                    f"decontamination against `exclude_dataset` dropped {self.decontamination['removed']}; lower the budget."
                )
        self.quality = None
        if args.quality_column is not None:
            values = self.pool.data.table.column(args.quality_column).to_numpy(zero_copy_only=False)
            self.quality = sample.validate_quality(values, args.quality_column)
        self.selection = SelectionState.start(self.labels, self.k)
        self._draw_round(1)
        strategy = args.train_sampling_strategy
        self.round_sampler = RoundSampler(
            args.selection_seed,
            strategy=strategy,
            lengths=self._token_lengths() if strategy == "group_by_length" else None,
            batch_size=args.train_batch_size * args.gradient_accumulation_steps,
        )
        self._sync_sampler()
        self._initial_state = None
        if args.round_mode == "restart":
            self._initial_state = {
                name: p.detach().clone().cpu() for name, p in self.model.named_parameters() if p.requires_grad
            }
        self._resumed_by_global_step = False
        self._epoch_steps: list[int] = []
        self.add_callback(_RoundCallback(self))
        check_round_evaluation(args, self.pool, sharded=self._model_is_sharded())
        if {"wandb", "trackio"} & set(args.report_to or []):
            from .trackers import SelectionTablesCallback

            self.add_callback(SelectionTablesCallback(self))
        self._pool_info = None
        self._checkpoint_state = None  # the selection state of the checkpoint being saved (main process)

    # ---- set-up ----

    def _check_selection_args(self, args, pool, scorer):
        budget, sizes = args.check_pool(pool)
        # Generation scorers compare each row's gold answer with the model's own: every row needs one.
        self._render = training_render_options(pool, scorer=scorer_name(scorer), gold_needed=gold_answers_needed(scorer))
        if not args.embed_answer:  # the research code embeds the prompt only
            self._render = dataclasses.replace(self._render, include_answer=False)
        return budget, sizes

    def _token_lengths(self) -> list[int]:
        """Token length of every prepared row: `length_column_name` if the pool has it, else `input_ids`."""
        columns = self.train_dataset.with_format("arrow")  # respects an indices mapping left by filtering
        if self.args.length_column_name in self.train_dataset.column_names:
            return columns[self.args.length_column_name].to_pylist()
        return pc.list_value_length(columns["input_ids"]).to_pylist()

    def _cluster_pool(self):
        """Every rank embeds its share of the pool; the main process clusters and broadcasts the labels."""
        args = self.args
        encoder = args.encoder
        if args.embed_with_model:  # the model as it is now, before any training step
            encoder = HiddenStateEncoder(self.accelerator.unwrap_model(self.model), tokenizer=self.processing_class)
        embeddings, identity = pool_embeddings(
            self.pool,
            self._render,
            encoder=encoder,
            embedding_column=args.embedding_column,
            distributed=self.accelerator.num_processes > 1,
        )
        data = None
        if self.accelerator.is_main_process:
            # The stage diverse_select runs: rows matching `exclude_dataset` are left out of k-means and never drawn.
            clusters = decontaminate_and_cluster(
                self.pool, embeddings, self._render, k=args.k_value, seed=args.selection_seed, budget=self.budget_rows,
                exclude_dataset=self._exclude, decontamination=self._decontamination, encoder=encoder,
                embedding_column=args.embedding_column,
            )
            data = {
                "labels": clusters.labels_of_every_row().tolist(), "k": clusters.clustering.k,
                "k_selection": clusters.k_selection, "encoder": encoder_record(identity, args.embedding_column, embeddings.shape[1]),
                "descriptions": clusters.descriptions, "decontamination": clusters.decontamination,
                "cluster_map": clusters.cluster_map,
                "target": trainer_target_record(self._target, clusters.clustering, self._render, args, encoder=encoder, dim=embeddings.shape[1]),
            }
        data = broadcast(data)
        self.decontamination = data["decontamination"]
        self.cluster_map = data["cluster_map"]
        self.encoder_info = data["encoder"]
        self.cluster_descriptions, self.target = data["descriptions"], data["target"]
        return np.asarray(data["labels"], dtype=np.int64), int(data["k"]), data["k_selection"]

    # ---- rounds ----

    @property
    def current_round(self) -> int:
        return self.selection.current_round

    def _draw_round(self, round_index: int) -> None:
        """Draw the rows of `round_index` on rank 0 and share them with every rank."""
        rows = None
        if self.accelerator.is_main_process:
            rows = draw_round(
                self.selection,
                self.labels,
                self.round_sizes[round_index - 1],
                round_index=round_index,
                trainable=self.trainable,
                selection_seed=self.args.selection_seed,
                quality=self.quality,
                quality_temperature=self.args.quality_temperature,
                quotas=self.args.quota,
                prior=target_prior(self.target),
            ).tolist()
        self.selection.current_round = round_index
        self.selection.current_rows = broadcast(rows)

    def _sync_sampler(self) -> None:
        rows = self.selection.current_rows
        if self.args.round_mode == "restart":
            rows = self.selection.selected()
        self.round_sampler.set_rows(self.position_of_row[np.asarray(rows, dtype=np.int64)])

    def _get_train_sampler(self, train_dataset=None):
        return self.round_sampler

    def _epoch_rows(self) -> list[int]:
        """Rows of every epoch of the run: the round's new rows ("continue") or every row selected so far ("restart")."""
        sizes = self.round_sizes if self.args.round_mode == "continue" else np.cumsum(self.round_sizes).tolist()
        return [int(n) for n in sizes for _ in range(self.args.epochs_per_round)]

    def _plan_epoch_steps(self, dataloader) -> list[int]:
        """Optimizer steps of every epoch on this rank, known before training: round sizes are fixed, and the
        dataloader's length for a given row count is its batches per rank (accelerate's sharding and
        `dataloader_drop_last` included); a last partial accumulation still makes a step."""
        sampler, kept = self.round_sampler, self.round_sampler.length
        batches = []
        try:
            for rows in self._epoch_rows():
                sampler.length = rows
                batches.append(len(dataloader))
        finally:
            sampler.length = kept
        if 0 in batches:
            epoch = batches.index(0)
            raise InvalidArgumentError(
                f"Epoch {epoch + 1} trains on {self._epoch_rows()[epoch]} rows, less than one batch per process "
                f"(`per_device_train_batch_size`={self.args.per_device_train_batch_size}, "
                f"`dataloader_drop_last`={self.args.dataloader_drop_last}): raise the budget or lower the batch size."
            )
        return [math.ceil(b / self.args.gradient_accumulation_steps) for b in batches]

    def set_initial_training_values(self, args, dataloader):
        self._epoch_steps = self._plan_epoch_steps(dataloader)
        values = list(super().set_initial_training_values(args, dataloader))
        # max_steps: the LR schedule (and its warm-up share) covers exactly the steps that run.
        values[-1] = sum(self._epoch_steps)
        return tuple(values)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """In "restart" mode each round is a fresh run from the base weights (as in the research code), so each round
        gets the whole schedule, warm-up and decay over its own steps; one schedule over every round would train
        the model that is kept, the last round's, on the decayed tail of the learning rate only."""
        if self.args.round_mode != "restart" or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        from transformers import get_scheduler

        per_round = np.add.reduceat(self._epoch_steps, np.arange(0, len(self._epoch_steps), self.args.epochs_per_round))
        starts = np.concatenate([[0], np.cumsum(per_round)[:-1]]).tolist()
        factors = []
        for steps in per_round.tolist():
            # A throwaway optimizer: only the schedule's multiplier function of a round is kept.
            shape = get_scheduler(
                self.args.lr_scheduler_type,
                optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
                num_warmup_steps=self.args.get_warmup_steps(steps),
                num_training_steps=steps,
                scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
            )
            factors.append(shape.lr_lambdas[0])

        def factor(step: int) -> float:
            r = int(np.searchsorted(starts, step, side="right")) - 1
            return factors[r](step - starts[r])

        optimizer = optimizer if optimizer is not None else self.optimizer
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def _run_epoch(self, model, epoch, train_dataloader, steps_in_epoch, num_update_steps_per_epoch, **kwargs):
        # Rounds differ in length: each epoch runs its own batches, and its last partial accumulation
        # steps the optimizer instead of leaking its gradient into the next round.
        return super()._run_epoch(
            model=model, epoch=epoch, train_dataloader=train_dataloader, steps_in_epoch=len(train_dataloader),
            num_update_steps_per_epoch=self._epoch_steps[epoch], **kwargs,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rows = inputs.pop(ROW_ID, None)
        if rows is None or not self.model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        position_ids = inputs.get("position_ids") if getattr(self, "padding_free", False) else None
        # A scorer that reads training itself (the loss scorer) keeps what this forward pass says of each row.
        with self.scorer.training_batch(rows, inputs.get("labels"), position_ids):
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def end_epoch(self) -> None:
        """Count a finished epoch; the last epoch of a round closes the round."""
        self.selection.epochs_done += 1
        self.selection.epoch_end_steps.append(int(self.state.global_step))
        if self.selection.epochs_done % self.args.epochs_per_round == 0 and self.current_round <= self.args.rounds:
            self.finish_round()

    def finish_round(self) -> None:
        """Score the finished round, update the cluster weights, write the round file, draw the next round."""
        r = self.current_round
        scored = r < self.args.rounds or self.args.score_last_round
        if scored:
            rows = self.selection.current_rows if self.args.scored_rows == "round" else self.selection.selected()
            scored_rows, scores = self._score_round(np.asarray(rows, dtype=np.int64))
        else:
            scored_rows, scores = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        record = close_round(
            self.selection, self.labels, self.trainable, scored_rows, scores,
            rule=self.args.weight_update, temperature=self.args.weight_temperature, scorer=self.scorer_name,
            scored=scored, global_step=self.state.global_step, k_selection=self.k_selection,
            cluster_terms=None if self.cluster_descriptions is None else [short_terms(d) for d in self.cluster_descriptions],
        )
        self.scorer.reset()
        metrics = round_metrics(record, scores)
        if self.args.round_eval_tasks:
            record.eval = self.selection.rounds[-1]["eval"] = self._evaluate_round()
            metrics.update({f"eval/{name}": value for name, value in record.eval["metrics"].items()})
        if self.accelerator.is_main_process:
            write_round_file(os.path.join(self.args.output_dir, "selection"), record)
            logger.info(round_summary(self.selection, rounds=self.args.rounds, budget_rows=self.budget_rows))
        self.log(metrics)
        if self.args.push_to_hub and self.accelerator.is_main_process:
            self._push_round(record.round)
        if r < self.args.rounds:
            self._draw_round(r + 1)
            if self.args.round_mode == "restart":
                self._restart_model()
            self._sync_sampler()
        else:
            self.selection.current_round = r + 1

    def _evaluate_round(self) -> dict:
        """`round_eval_tasks` ([`~evaluation.evaluate_round`]) on the main process; every rank gets the result."""
        result = None
        if self.accelerator.is_main_process:
            result = evaluate_round(self.accelerator.unwrap_model(self.model), self.processing_class, self.args, self.pool)
        return broadcast(result)

    def _score_round(self, rows: np.ndarray):
        """Per-row scores S of `rows` (this round's or all of D', `scored_rows`; high = the gold answer still
        beats the model), the same on every rank: what to run is the scorer's decision ([`~scoring.RoundScorer.score_round`])."""
        context = self._scoring_context(
            self.accelerator.unwrap_model(self.model), labels=self.labels, round_index=self.current_round
        )
        return self.scorer.score_round(rows, context)

    def _scoring_context(self, model, *, labels=None, round_index: int = 0) -> ScoringContext:
        """What the scorer may read of this run: `model`, the pool's texts and training losses, the ranks."""
        return ScoringContext(
            model=model, tokenizer=self.processing_class, args=self.args, pool_size=len(self.pool),
            sharded=self._model_is_sharded(), prompts_and_golds=self._prompts_and_golds, conversations=self._prompt_turns,
            forward_losses=self._forward_losses, gather=self._gather, rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes, show_progress=self.accelerator.is_main_process,
            labels=labels, round_index=round_index, target=getattr(self, "target", None),
        )

    def _forward_losses(self, rows: np.ndarray) -> list:
        """`(row, loss)` of this rank's share of `rows` under the current model: the loss scorer's score of rows
        that were not trained this round, from the same per-row loss as training records."""
        mine = equal_share(rows, self.accelerator.process_index, self.accelerator.num_processes)
        if not len(mine):
            return []
        dataset = self._remove_unused_columns(self.train_dataset.select(self.position_of_row[mine]), description="scoring")
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.args.scoring_batch_size, collate_fn=self.data_collator)
        model = self.accelerator.unwrap_model(self.model)
        was_training, pairs = model.training, []
        model.eval()
        try:
            with torch.no_grad():
                for batch in loader:
                    ids = batch.pop(ROW_ID)
                    batch = self._prepare_inputs(batch)
                    position_ids = batch.get("position_ids") if getattr(self, "padding_free", False) else None
                    outputs = model(**batch)
                    losses = per_row_loss(outputs, batch["labels"], position_ids, rows=len(ids))
                    pairs.extend(zip(ids.tolist(), losses.tolist()))
        finally:
            model.train(was_training)
        return pairs

    def _gather(self, items: list) -> list:
        return gather_object(list(items)) if self.accelerator.num_processes > 1 else list(items)

    def _prompts_and_golds(self, rows) -> list[tuple[str, str]]:
        tokenizer = self.processing_class
        options = resolve_render_options(self.pool.column_names, tokenizer=tokenizer)
        return [prompt_and_answer(self.pool[int(r)], options, tokenizer) for r in rows]

    def _prompt_turns(self, rows) -> list[list[dict]]:
        """Each row's prompt turns (every message before the gold answer, ShareGPT turns as `role`/`content`),
        for a scorer that renders them in its own model's format (`needs_conversations`)."""
        return [prompt_turns(self.pool[int(r)], self._render) for r in rows]

    def _model_is_sharded(self) -> bool:
        from transformers.integrations import is_deepspeed_zero3_enabled

        return bool(is_deepspeed_zero3_enabled() or getattr(self, "is_fsdp_enabled", False))

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

    def _selection_plan(self) -> dict:
        """The round plan a checkpoint records and a resume compares ([`~checkpoint.selection_plan`])."""
        terms = None if self.cluster_descriptions is None else [short_terms(d) for d in self.cluster_descriptions]
        return selection_plan(
            self.args, scorer=self.scorer_name, generation=self.scorer.needs_generation, budget_rows=self.budget_rows,
            round_sizes=self.round_sizes, k_selection=self.k_selection, encoder=self.encoder_info, cluster_terms=terms,
            trainable=self.trainable, rows_per_step=self._rows_per_step(), epoch_steps=self._epoch_steps, target=self.target,
        )

    def _rows_per_step(self) -> int:
        return self._train_batch_size * self.args.gradient_accumulation_steps * self.accelerator.num_processes

    def _load_selection_state(self, path: str):
        """The checkpoint state at `path` checked against this run ([`~checkpoint.load_state`]), with the scorer's saved
        state restored; returns it and the plan it recorded. Every rank checks the scorer's state; only rank 0 keeps
        it, so that the round's final gather counts it once."""
        state, recorded = load_state(
            path, self._selection_plan(), k=self.k, labels=self.labels, trainable=self.trainable, quality=self.quality,
            pool=self._pool_record(),
        )
        try:
            self.scorer.restore(state.pending_losses)
        except InvalidArgumentError as err:
            raise InvalidArgumentError(f"`resume_from_checkpoint`: {path}: `pending_losses`: {err}") from None
        if not self.accelerator.is_main_process:
            self.scorer.restore([])
        state.pending_losses = []
        return state, recorded

    # ---- publishing ----

    @property
    def staging_dir(self) -> str:
        """Where the selection is staged before any upload (left out of the model repo by its leading `_`)."""
        return staging_folder(self.args.output_dir)

    @property
    def hub_dataset_id(self) -> str:
        """The selection's dataset repo: `hub_dataset_id`, else `<model repo>-selection`."""
        if self.args.hub_dataset_id:
            return self.args.hub_dataset_id
        model_id = self.hub_model_id or self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
        return selection_repo_id(model_id)

    def _pool_record(self) -> dict:
        if self._pool_info is None:
            columns = list(self._render.input_columns)
            columns += [c for c in (self.args.embedding_column, self.args.quality_column) if c is not None]
            source = {"path": self.args.pool_id, "split": str(self.pool.split or "train")} if self.args.pool_id else None
            self._pool_info = pool_record(self.pool, columns, name=self.args.pool_id, source=source)
        return self._pool_info

    def selection_manifest(self, config: str = DEFAULT_CONFIG) -> Manifest:
        """The manifest of one round's rows (`"round_<r>"`) or of every row selected so far (`"default"`)."""
        return selection_manifest(
            self.selection, self.labels, config,
            method=ITERATIVE_METHOD, seed=self.args.selection_seed, budget_requested=self.args.budget,
            budget_rows=self.budget_rows, pool=self._pool_record(),
            arguments={**self.args.selection_arguments(), "scorer": self.scorer_name},
            k_selection=self.k_selection, render=self._render.to_dict(), encoder=self.encoder_info,
            cluster_descriptions=self.cluster_descriptions, decontamination=self.decontamination,
            cluster_map=self.cluster_map, target=self.target,
        )

    def _stage_selection(self, configs: list[str] | None = None) -> None:
        """Stage `configs` (default: every finished round's and the default) under `staging_dir` (main process)."""
        rounds = self.selection.rounds
        configs = configs or [round_config(r["round"]) for r in rounds] + [DEFAULT_CONFIG]
        everything = self.selection_manifest(DEFAULT_CONFIG)
        card = run_dataset_card(
            everything, rounds, repo_id=self.hub_dataset_id, pool_id=self.args.pool_id, folder=self.staging_dir,
            scorer=self.scorer_name, weight_update=self.args.weight_update, token=self.args.hub_token,
        )
        stage_run(
            self.staging_dir, self.hub_dataset_id, pool=self.pool, rounds=rounds, everything=everything, card=card,
            manifests={name: self.selection_manifest(name) for name in configs}, private=self.args.hub_private_repo,
        )

    def _push_round(self, round_index: int) -> None:
        """Stage and push one finished round; a failure here only warns, the final push retries it."""
        self._stage_selection([round_config(round_index)])
        try:
            push_folder(self.staging_dir, token=self.args.hub_token, include_model=False)
        except PushError as err:
            logger.warning("Round %d's rows were not pushed yet (training goes on): %s", round_index, err)

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None):
        """Write hf_idsel's model card (`model_cards/model_card.md`) to `output_dir/README.md`.

        TRL and PEFT read only their own templates. The card tells the base model, the selection
        (method, budget, k, rounds, scorer, weight rule), the hyperparameters and how to load the
        model. Without `dataset_name` (no push) it names no Hub repo and says how to push the run;
        the facts it was written from are kept beside it so that `hf-idsel push` writes it again.

        Args:
            model_name (`str`, *optional*):
                The card's title; default: the model repo's name, or the output folder's.
            dataset_name (`str`, *optional*):
                The dataset repo the selection was pushed to; the card links it.
            tags (`str` or `list[str]`, *optional*):
                Tags added to the card's own.
        """
        if not self.is_world_process_zero():
            return
        save_model_card(
            self._model_card_facts(model_name, tags), self.args.output_dir,
            hub_model_id=self.hub_model_id if dataset_name else None, dataset_id=dataset_name, keep_facts=True,
        )

    def _model_card_facts(self, model_name: str | None = None, tags=None) -> dict:
        return trainer_model_card_facts(
            self.selection_manifest(DEFAULT_CONFIG), self.args, rounds=self.selection.rounds, model=self.model,
            base_model=self._base_model, license=self._license, tags=tags, trainer_tags=self._tag_names,
            processes=self.accelerator.num_processes, budget_rows=self.budget_rows, k=self.k, scorer=self.scorer_name,
            global_step=self.state.global_step, model_name=model_name,
        )

    def _save(self, output_dir: str | None = None, state_dict=None):
        """Save the model, then hf_idsel's card beside it, in place of the template PEFT writes there.

        A checkpoint gets the card of the run as it stands at that step.
        """
        super()._save(output_dir, state_dict=state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.is_world_process_zero():
            return
        if os.path.abspath(output_dir) == os.path.abspath(self.args.output_dir):
            self.create_model_card()
        else:
            save_model_card(self._model_card_facts(), output_dir)

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
        self._stage_selection()
        model_name = kwargs.pop("model_name", None) or self.hub_model_id.split("/")[-1]
        self.create_model_card(model_name=model_name, dataset_name=kwargs.pop("dataset_name", None) or self.hub_dataset_id, **kwargs)
        self._finish_current_push()
        set_model_push(self.staging_dir, self.hub_model_id, self.args.output_dir, commit_message=commit_message, revision=revision or self.args.hub_revision)
        return push_folder(self.staging_dir, token=token, private=private if private is not None else self.args.hub_private_repo)

    def _save_checkpoint(self, model, trial):
        # What the scorer keeps of the round in progress lives on every rank: collect it so a resume scores the same round.
        pending = self._gather(self.scorer.state())
        self._checkpoint_state = None
        if self.accelerator.is_main_process:
            state = copy.deepcopy(self.selection)
            state.pending_losses = [list(x) for x in pending]
            state.pool_digest = self._pool_record()["digest"]
            self._checkpoint_state = state
        super()._save_checkpoint(model, trial)
        self._write_checkpoint_state(os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}"))

    def _push_from_checkpoint(self, checkpoint_folder):
        # Trainer pushes the checkpoint (hub_strategy) before `_save_checkpoint` returns: the state goes with it.
        self._write_checkpoint_state(checkpoint_folder)
        super()._push_from_checkpoint(checkpoint_folder)

    def _write_checkpoint_state(self, folder: str) -> None:
        if self._checkpoint_state is not None:
            write_state(self._checkpoint_state, folder, self._selection_plan())

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial):
        epochs_trained, steps_in_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        ends = self.selection.epoch_end_steps
        self._resumed_by_global_step = resume_from_checkpoint is not None and len(ends) != self.selection.epochs_done
        if resume_from_checkpoint is not None and not self._resumed_by_global_step:
            # Trainer places a resume at global_step // steps_per_epoch, as if every epoch had the same
            # length; a round's epoch can be shorter (restart mode, rounds of unequal size). The
            # selection knows where each epoch ended.
            epochs_trained = self.selection.epochs_done
            done = self.state.global_step - (ends[-1] if ends else 0)
            steps_in_epoch = 0 if self.args.ignore_data_skip else done * self.args.gradient_accumulation_steps
        if resume_from_checkpoint is not None and self._resumed_from is not None:
            # Now that the epochs are planned: the checkpoint's batch plan, and its epochs ending where this plan says.
            path, recorded = self._resumed_from
            check_steps(
                recorded, self.selection, rows_per_step=self._rows_per_step(), epoch_steps=self._epoch_steps,
                global_step=self.state.global_step, where=path,
            )
        return epochs_trained, steps_in_epoch

    def train(self, resume_from_checkpoint=None, **kwargs):
        self._resumed_from = None  # (state file, recorded plan) of a resume, checked again once the epochs are planned
        if resume_from_checkpoint:
            from transformers.trainer_utils import get_last_checkpoint

            folder = resume_from_checkpoint
            if folder is True:
                folder = get_last_checkpoint(self.args.output_dir)
            elif not isinstance(folder, (str, os.PathLike)):
                raise InvalidArgumentError(f"`resume_from_checkpoint`={folder!r} must be a checkpoint folder or True.")
            path = os.path.join(folder, STATE_FILE) if folder else None
            if not path or not os.path.isfile(path):
                raise InvalidArgumentError(
                    f"`resume_from_checkpoint`: {folder!r} holds no {STATE_FILE}; it was not written by IterativeSelectionTrainer."
                )
            state, recorded = self._load_selection_state(path)
            if state.epochs_done >= self.args.rounds * self.args.epochs_per_round:
                raise InvalidArgumentError(
                    f"`resume_from_checkpoint`: {folder} is the end of a finished run (all {self.args.rounds} rounds "
                    "trained): nothing is left to train. Load the model from it, or publish the run with "
                    "`hf-idsel push OUTPUT_DIR`."
                )
            self.selection = state
            self._resumed_from = (path, recorded)
            self._sync_sampler()
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        if self.accelerator.is_main_process and self.selection.rounds:
            # Everything a later `hf-idsel push OUTPUT_DIR` needs is on disk, pushed or not.
            self._stage_selection()
            if self.args.hub_model_id:
                set_model_push(self.staging_dir, self.args.hub_model_id, self.args.output_dir)
        # The card of the run, whether or not the weights are saved here yet (a later save writes it again).
        self.create_model_card()
        return output
