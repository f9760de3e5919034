"""The round-scoring interface: what every round scorer offers and what the trainer hands it.

[`RoundScorer`] is the one base class. Called as `scorer(prompts, golds, generations)` it scores
rows (checked inputs in, one finite float64 per row out; a subclass implements `_score`). Over a run,
[`IterativeSelectionTrainer`] drives it through hooks that each have a default, so that the trainer
never asks which scorer it holds: `prepare` once before training, `training_batch` around every
training forward pass, `score_round` when a round ends, `reset` after it, and `state`/`restore` for
what a checkpoint keeps of the round in progress. The hooks receive a [`ScoringContext`]: the
model, the pool's texts and the ranks, as plain values and functions. The scorers themselves are in
[`scorers`].
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .distributed import equal_share
from .errors import InvalidArgumentError
from .lm import answer_log_likelihood, check_strings, generate_answers
from .render import prompt_and_answer, resolve_render_options
from .rounds import merge_scores, round_seed, sample_rows_per_cluster
from .target import as_target_dataset, target_digest


def check_scores(values: Any, n: int, who: str) -> np.ndarray:
    """`values` as a finite float64 vector of length `n`, or an error naming `who`."""
    try:
        scores = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(f"{who} must return numbers, got {type(values).__name__} ({error}).") from error
    if scores.shape != (n,):
        raise InvalidArgumentError(
            f"{who} returned shape {scores.shape} for {n} rows; it must return one number per row."
        )
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise InvalidArgumentError(
            f"{who} returned non-finite values (NaN or inf) for rows {bad[:10].tolist()}; every score must be finite."
        )
    return scores


def check_conversations(conversations: Any, n: int, who: str) -> list[list[dict]]:
    """`conversations` as `n` lists of `role`/`content` messages (copied), or an error naming the scorer `who`."""
    if conversations is None:
        raise InvalidArgumentError(
            f"{who} renders each row's prompt turns in its own model's chat format: pass `conversations=` (one list "
            "of `{'role', 'content'}` messages per row), as IterativeSelectionTrainer does."
        )
    if isinstance(conversations, (str, dict)) or not isinstance(conversations, Sequence) or len(conversations) != n:
        size = len(conversations) if isinstance(conversations, Sequence) else type(conversations).__name__
        raise InvalidArgumentError(f"`conversations` must be a list of {n} message lists (one per row), got {size}.")
    checked = []
    for i, turns in enumerate(conversations):
        if isinstance(turns, (str, dict)) or not isinstance(turns, Sequence) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in turns
        ):
            raise InvalidArgumentError(
                f"`conversations` row {i} must be a list of messages with string `role` and `content`, got {turns!r:.120}."
            )
        checked.append([dict(m) for m in turns])
    return checked


@dataclasses.dataclass
class ScoringContext:
    """What the trainer hands its scorer ([`RoundScorer.prepare`], [`RoundScorer.score_round`]): plain values
    and functions over the run, so that a scorer never reads the trainer itself.

    Attributes:
        model (`PreTrainedModel` or `PeftModel`):
            The model being trained (unwrapped from any distributed wrapper).
        tokenizer (`PreTrainedTokenizerBase`):
            Its tokenizer.
        args (`IterativeSelectionConfig`):
            The run's configuration (`scored_rows`, `scored_rows_per_cluster`, `round_mode`,
            `selection_seed`, `scoring_batch_size`, `generation_max_new_tokens`, ...).
        pool_size (`int`):
            Rows in the pool; row ids are in `[0, pool_size)`.
        sharded (`bool`):
            Whether the model is sharded across ranks (DeepSpeed ZeRO-3, FSDP), so that no rank can run
            it alone.
        prompts_and_golds (`Callable[[Sequence[int]], list[tuple[str, str]]]`):
            Each pool row's rendered prompt (the trained model's chat template, generation prompt open)
            and gold answer.
        conversations (`Callable[[Sequence[int]], list[list[dict]]]`):
            Each pool row's prompt turns (`role`/`content` messages before the gold answer).
        forward_losses (`Callable[[np.ndarray], list[tuple[int, float]]]`):
            `(row, loss)` of this rank's equal share of the rows, from a no-grad forward pass of the
            current model over their training examples ([`~lm.per_row_loss`]).
        gather (`Callable[[list], list]`):
            Every rank's list, concatenated in rank order; every rank must call it.
        rank (`int`, *optional*, defaults to `0`):
            This process's rank.
        world_size (`int`, *optional*, defaults to `1`):
            Number of processes.
        show_progress (`bool`, *optional*, defaults to `True`):
            Whether this process shows progress bars (the main process).
        labels (`np.ndarray`, *optional*):
            Cluster of every pool row; set when a round ends, `None` in `prepare` (before clustering).
        round_index (`int`, *optional*, defaults to `0`):
            The round that just ended (1-based); `0` in `prepare`.
        target (`dict`, *optional*):
            The run's target record ([`~target.Target.record`]: digest, `example_clusters`, ...) when the trainer
            was given `target_dataset=`; `None` otherwise, and in `prepare`.
    """

    model: Any
    tokenizer: Any
    args: Any
    pool_size: int
    sharded: bool
    prompts_and_golds: Callable[[Sequence[int]], list[tuple[str, str]]]
    conversations: Callable[[Sequence[int]], list[list[dict]]]
    forward_losses: Callable[[np.ndarray], list[tuple[int, float]]]
    gather: Callable[[list], list]
    rank: int = 0
    world_size: int = 1
    show_progress: bool = True
    labels: np.ndarray | None = None
    round_index: int = 0
    target: dict | None = None


class RoundScorer(abc.ABC):
    """Base class of round scorers: `scorer(prompts, golds, generations) -> np.ndarray`, plus the hooks the
    trainer calls over a run.

    Calling a scorer checks its inputs (lists of strings of equal length, non-empty gold answers,
    generations present when `needs_generation`), runs `_score` and checks that the result holds
    one finite float64 per row. A subclass implements `_score` with the same arguments.

    [`IterativeSelectionTrainer`] drives every scorer through the same hooks, each with a default:
    [`prepare`](#prepare) once before training, [`training_batch`](#training_batch) around every
    training forward pass, [`score_round`](#score_round) when a round ends (by default: generate
    answers for up to `scored_rows_per_cluster` rows of each cluster and call the scorer on them),
    [`reset`](#reset) after it, and [`state`](#state) / [`restore`](#restore) for what a checkpoint
    keeps of the round in progress. [`bind`](#bind) gives the scorer the current model before each
    call. A scorer that needs more overrides the hook; the trainer never tests which scorer it holds.

    Attributes:
        name (`str`):
            What round records, manifests and cards call the scorer (defaults to the class name).
        needs_generation (`bool`):
            Whether the scorer compares the gold answer with the model's own answer. When `False`
            the trainer skips generation and passes `generations=None`.
        needs_conversations (`bool`):
            Whether the scorer reads each row's prompt as chat turns (`conversations=`) rather than
            the rendered `prompts` alone. When `True`, `_score` receives them as the keyword
            `conversations`; when `False` (the default) `_score` is called with the three lists only,
            so subclasses written for that interface keep working.
        needs_gold (`bool`):
            Whether every row needs a non-empty gold answer (the text scorers compare it with the
            model's). The trainer checks the pool for it before anything runs; `False` for
            [`LossScorer`], which reads the training loss of whatever completion a row has.
    """

    name: str = ""
    needs_generation: bool = True
    needs_conversations: bool = False
    needs_gold: bool = True

    def __call__(
        self,
        prompts: list[str],
        golds: list[str],
        generations: list[str] | None,
        *,
        conversations: list[list[dict]] | None = None,
    ) -> np.ndarray:
        """Score rows.

        Args:
            prompts (`list[str]`):
                Rendered prompts.
            golds (`list[str]`):
                The rows' gold answers (non-empty).
            generations (`list[str]` or `None`):
                The current model's answers (`""` allowed), or `None` when the scorer does not need
                them.
            conversations (`list[list[dict]]`, *optional*):
                Each row's prompt turns (`{"role": ..., "content": ...}` messages, everything before the
                gold answer). Required when `needs_conversations`, ignored otherwise.

        Returns:
            `np.ndarray`: float64 of shape `(len(prompts),)`, finite; high = the gold answer still
            beats the model's answer.
        """
        prompts = check_strings("prompts", prompts)
        golds = check_strings("golds", golds)
        if len(golds) != len(prompts):
            raise InvalidArgumentError(f"`prompts` has {len(prompts)} items but `golds` has {len(golds)}.")
        empty = [i for i, gold in enumerate(golds) if not gold]
        if empty:
            raise InvalidArgumentError(f"`golds` rows {empty[:10]} are empty; every scored row needs a gold answer.")
        if self.needs_generation:
            if generations is None:
                raise InvalidArgumentError(
                    f"{type(self).__name__} compares gold answers with the model's answers: pass `generations`."
                )
            generations = check_strings("generations", generations)
            if len(generations) != len(prompts):
                raise InvalidArgumentError(
                    f"`prompts` has {len(prompts)} items but `generations` has {len(generations)}."
                )
        else:
            generations = None
        if self.needs_conversations:
            conversations = check_conversations(conversations, len(prompts), type(self).__name__)
        if not prompts:
            return np.zeros(0, dtype=np.float64)
        if self.needs_conversations:
            values = self._score(prompts, golds, generations, conversations=conversations)
        else:
            values = self._score(prompts, golds, generations)
        return check_scores(values, len(prompts), type(self).__name__)

    @abc.abstractmethod
    def _score(self, prompts: list[str], golds: list[str], generations: list[str] | None) -> np.ndarray:
        """Scores of checked, non-empty inputs (see `__call__`)."""

    def bind(self, model: Any, tokenizer: Any) -> RoundScorer:
        """Take the model being trained and its tokenizer before a call; returns `self`. The default ignores
        them: only a scorer that reads the trained model ([`PerplexityScorer`], [`LikelihoodScorer`] with
        `reference="base"`) keeps them."""
        return self

    def prepare(self, context: ScoringContext) -> None:
        """Check the run and set up before training: called once, after the trainer wraps the model and before
        the pool is embedded, so that a scorer that cannot serve this run fails before anything expensive.
        The default does nothing."""

    @contextlib.contextmanager
    def training_batch(
        self, rows: torch.Tensor, labels: torch.Tensor | None, position_ids: torch.Tensor | None = None
    ) -> Iterator[None]:
        """Context the trainer runs each training forward pass in: `rows` are the batch's pool rows, `labels`
        its label ids, `position_ids` the restarting positions of a padding-free batch (else `None`). The
        default records nothing; [`LossScorer`] keeps the batch's per-row losses."""
        yield

    def score_round(self, rows: np.ndarray, context: ScoringContext) -> tuple[np.ndarray, np.ndarray]:
        """Per-row scores S of a finished round's candidate `rows` (this round's or all selected so far), the
        same on every rank.

        The default scores up to `args.scored_rows_per_cluster` rows of each cluster (seeded by the round):
        every rank takes an equal share, generates the model's answers when `needs_generation`, calls the
        scorer ([`score_rows`]) and the shares are gathered.

        Args:
            rows (`np.ndarray`):
                The candidate pool rows.
            context ([`ScoringContext`]):
                The run, with `labels` and `round_index` set.

        Returns:
            `tuple[np.ndarray, np.ndarray]`: the scored rows (sorted int64) and their scores (float64).
        """
        args = context.args
        scored = sample_rows_per_cluster(
            context.labels, rows, args.scored_rows_per_cluster, seed=round_seed(args.selection_seed, context.round_index)
        )
        mine = equal_share(scored, context.rank, context.world_size)
        pairs = context.prompts_and_golds(mine)
        values = score_rows(
            self, context.model, context.tokenizer, [p for p, _ in pairs], [g for _, g in pairs],
            conversations=context.conversations(mine) if self.needs_conversations else None,
            max_new_tokens=args.generation_max_new_tokens, batch_size=args.scoring_batch_size,
            show_progress=context.show_progress, synced_gpus=context.world_size > 1 and context.sharded,
        ).tolist()
        return merge_scores(context.gather(list(zip(mine.tolist(), values))))

    def reset(self) -> None:
        """Forget what was kept of the round just scored; called when a round closes. The default keeps nothing."""

    def state(self) -> list:
        """What this rank keeps of the round in progress, as JSON-ready items; a checkpoint stores every
        rank's, gathered. The default keeps nothing: `[]`."""
        return []

    def restore(self, state: list) -> None:
        """Take back what [`state`](#state) returned, from a checkpoint (all ranks' items, given to the main
        process only, so that a gather counts each once). The default keeps nothing, so it has nothing to restore."""


def score_rows(
    scorer: RoundScorer, model: Any, tokenizer: Any, prompts: list[str], golds: list[str], conversations=None, **generation
) -> np.ndarray:
    """Score rows with the current `model`: its answers are generated (`generation` goes to
    [`~lm.generate_answers`]) when the scorer compares with them, and a scorer that reads the model
    itself ([`PerplexityScorer`]) is bound to it first. `conversations` (each row's prompt turns) go
    to scorers with `needs_conversations` only, so any other scorer is called as before."""
    generations = None
    if scorer.needs_generation and prompts:
        generations = generate_answers(model, tokenizer, prompts, **generation)
    scorer.bind(model, tokenizer)
    if not prompts:
        return np.zeros(0, dtype=np.float64)
    if scorer.needs_conversations:
        return scorer(prompts, golds, generations, conversations=conversations)
    return scorer(prompts, golds, generations)


class TargetLossScorer(RoundScorer):
    """Scores clusters by the trained model's loss on the target examples: the signal the iterative loop lacks when
    the goal is known. Pass the trainer's own target: `IterativeSelectionTrainer(..., target_dataset=examples,
    scorer=TargetLossScorer(examples))`.

    When a round ends, each target example's loss (mean per-token negative log-likelihood of its answer given its
    prompt, in the trained model's chat template: [`~lm.answer_log_likelihood`]) is computed under the current model,
    and each cluster holding target examples (by nearest centroid, the record's `example_clusters`) is scored by their
    mean loss; clusters with no target example are not scored and keep their weight. With the default softmax rule
    the clusters where the model still does worst on the target gain weight, the ones it has learned lose it.

    Cost: one no-grad forward pass over the m target examples per scored round (m x their tokens; 32 examples of
    ~200 tokens are one batch-of-8 pass of 4 steps), shared by the ranks; no generation and no pool row is scored.
    The candidate `rows` are not read, so `scored_rows` and `scored_rows_per_cluster` change nothing.

    Args:
        target_dataset (`datasets.Dataset` or `list[str]`):
            The examples given to the trainer as `target_dataset` (checked against its recorded digest), with
            prompts and answers (a list of strings has no answers and cannot be scored).
        batch_size (`int`, *optional*, defaults to `8`):
            Examples per forward pass.
        max_length (`int`, *optional*, defaults to `1024`):
            Maximum tokens of an example (prompt + answer).
    """

    name = "target_loss"
    needs_generation = False
    needs_gold = False

    def __init__(self, target_dataset, *, batch_size: int = 8, max_length: int = 1024):
        self.examples = as_target_dataset(target_dataset, "TargetLossScorer(target_dataset)")
        self.digest = target_digest(self.examples)
        self.batch_size, self.max_length = batch_size, max_length
        self._model = self._tokenizer = None

    def bind(self, model: Any, tokenizer: Any) -> RoundScorer:
        self._model, self._tokenizer = model, tokenizer
        return self

    def _score(self, prompts: list[str], golds: list[str], generations: list[str] | None) -> np.ndarray:
        """Each pair's loss under the bound model: mean per-token NLL of the gold answer given the prompt."""
        if self._model is None:
            raise InvalidArgumentError("TargetLossScorer reads the trained model: bind it first (`scorer.bind(model, tokenizer)`).")
        return -answer_log_likelihood(
            self._model, self._tokenizer, prompts, golds, batch_size=self.batch_size, max_length=self.max_length,
            show_progress=False,
        )

    def prepare(self, context: ScoringContext) -> None:
        if context.sharded and context.world_size > 1:
            raise InvalidArgumentError(
                "TargetLossScorer runs the model on each rank's share of the target examples, which a model sharded "
                "across ranks (DeepSpeed ZeRO-3, FSDP) cannot: use another scorer, or train without sharding."
            )
        self.pairs(context.tokenizer)  # a target without answers is refused before anything is embedded

    def pairs(self, tokenizer: Any) -> list[tuple[str, str]]:
        """Each target example's prompt (the tokenizer's chat template, generation prompt open) and answer."""
        try:
            options = resolve_render_options(self.examples.column_names, tokenizer=tokenizer)
        except InvalidArgumentError as err:
            raise InvalidArgumentError(f"TargetLossScorer(target_dataset): {err}") from None
        pairs = [prompt_and_answer(self.examples[i], options, tokenizer) for i in range(len(self.examples))]
        empty = [i for i, (_, answer) in enumerate(pairs) if not answer]
        if empty:
            raise InvalidArgumentError(
                f"TargetLossScorer(target_dataset): rows {empty[:10]} have no answer to score the model's loss on; pass "
                "examples with prompts and answers (the layouts of a pool)."
            )
        return pairs

    def score_round(self, rows: np.ndarray, context: ScoringContext) -> tuple[np.ndarray, np.ndarray]:
        """One score per cluster holding target examples (their mean loss), carried by that cluster's first candidate
        row (its first pool row when no candidate is in it), so that [`~rounds.cluster_scores`] reads it back."""
        record = context.target
        if record is None or record.get("digest") != self.digest or record.get("example_clusters") is None:
            raise InvalidArgumentError(
                "TargetLossScorer scores clusters by the model's loss on the run's target: give the trainer the same "
                "examples as `target_dataset=`."
            )
        pairs = self.pairs(context.tokenizer)
        mine = equal_share(np.arange(len(pairs)), context.rank, context.world_size)
        losses = score_rows(self, context.model, context.tokenizer, [pairs[i][0] for i in mine], [pairs[i][1] for i in mine])
        loss = np.empty(len(pairs))
        for example, value in context.gather(list(zip(mine.tolist(), losses.tolist()))):
            loss[example] = value
        nearest = np.asarray(record["example_clusters"], dtype=np.int64)
        labels = np.asarray(context.labels)
        candidates = np.sort(np.asarray(rows, dtype=np.int64))
        scored = []
        for cluster in np.unique(nearest):
            inside = candidates[labels[candidates] == cluster]
            row = inside[0] if len(inside) else np.flatnonzero(labels == cluster)[0]
            scored.append((int(row), float(loss[nearest == cluster].mean())))
        return merge_scores(scored)
