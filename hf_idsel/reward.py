"""The reward-model round scorer, the paper's best: `S = RM(prompt + gold) - RM(prompt + generation)`.

A reward model reads text in the format it was trained on, rarely the trained model's, so by default
[`RewardScorer`] renders each row's prompt turns plus the answer with the REWARD model's chat template.
Before training it checks that its tokenizer can read the pool ([`RewardScorer.check_encodable`]).
It is registered, with the other scorers, in [`scorers.SCORERS`] as `"reward"`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .checks import check_int
from .errors import InvalidArgumentError
from .lm import check_strings, encode_prompts, pad_batch, resolve_device, resolve_dtype, with_pad_token
from .scoring import RoundScorer, ScoringContext, check_conversations


logger = logging.getLogger(__name__)

# A sample whose tokens are more than this share of `unk` cannot be read by the reward model.
MAX_UNK_FRACTION = 0.05
# `RewardScorer(template=POLICY_TEMPLATE)`: score the trained model's rendered text, not the reward model's format.
POLICY_TEMPLATE = "policy"


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
        conversations = check_conversations(conversations, len(answers), type(self).__name__)
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

    def prepare(self, context: ScoringContext) -> None:
        """Refuse a pool the reward model's tokenizer cannot read ([`check_encodable`](#check_encodable) on the
        texts of up to 64 seeded pool rows), before training."""
        rows = np.random.default_rng(context.args.selection_seed).choice(
            context.pool_size, min(64, context.pool_size), replace=False
        )
        pairs = context.prompts_and_golds(rows)
        conversations = context.conversations(rows) if self.needs_conversations else None
        self.check_encodable(self.texts([p for p, _ in pairs], [a for _, a in pairs], conversations))

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
