"""Decontamination: drop pool rows that copy or nearly copy items of an evaluation set.

Two tests, either of which drops a row (thresholds measured on the built-in pool, see docs/method.md):

- word n-gram overlap: the share of an evaluation item's distinct word `ngram`-grams (lower-cased, punctuation
  dropped) that also occur in the pool row. The usual practice (GPT-3, Llama) flags any shared 13-gram; a share of the
  item's n-grams does not flag a row for one shared boilerplate phrase ("the following is a multiple-choice question
  about ...") yet still catches a copy with a few words changed.
- embedding cosine: the cosine similarity of the row to the item, with the encoder of the selection (its vectors are
  cached like the pool's).

Both compare the text the selection embeds (prompt and answer, or the prompt only with `embed_answer=False`). Their
settings are one [`DecontaminationSettings`], which `diverse_select`, the trainer and the manifest's record share.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any

import datasets
import numpy as np

from .errors import InvalidArgumentError
from .render import RenderOptions, render_batch, resolve_render_options

logger = logging.getLogger(__name__)

DEFAULT_NGRAM = 8
DEFAULT_NGRAM_THRESHOLD = 0.6
DEFAULT_COSINE_THRESHOLD = 0.99
TEMPLATE_SHARE = 0.01  # an n-gram in at least this share of all texts (pool and evaluation set) is a template
TEMPLATE_MIN_TEXTS = 10  # ... and in at least this many
_PUNCTUATION = re.compile(r"[^\w\s]")
_BLOCK = 2048  # pool rows per block of the cosine product


def words(text: str) -> list[str]:
    """Lower-cased words with punctuation deleted ("3.5" -> "35", "don't" -> "dont"): whitespace, case and
    punctuation changes do not hide a copy."""
    return _PUNCTUATION.sub("", text.lower()).split()


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The distinct word `n`-grams of `text`; a text shorter than `n` words is one n-gram of all its words."""
    tokens = words(text)
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def ngram_overlap(pool_texts: list[str], exclude_texts: list[str], n: int = DEFAULT_NGRAM) -> tuple[np.ndarray, np.ndarray]:
    """For each pool text, the largest share of one evaluation text's distinct n-grams it contains, and that text.

    An n-gram found in at least 1% of all the texts, pool and evaluation set together (and in at least 10), is a
    template (the benchmark's "the following is a multiple-choice question about", a stem many questions share) and
    is left out of every share; an evaluation text made only of such n-grams matches nothing. A text copied into the
    pool fewer than 10 times keeps its n-grams; more copies are still caught by the cosine test.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: `(overlap, item)`: float64 shares in [0, 1] and the index of the evaluation
        text that reaches them (-1 when the row shares no n-gram).
    """
    index: dict[tuple[str, ...], list[int]] = {}
    for item, text in enumerate(exclude_texts):
        for gram in ngrams(text, n):
            index.setdefault(gram, []).append(item)
    # One pass over the pool keeps only the n-grams evaluation texts hold, and counts the rows holding each.
    row_hits = [[gram for gram in ngrams(text, n) if gram in index] for text in pool_texts]
    rows_with = Counter(gram for hits in row_hits for gram in hits)
    common = max(TEMPLATE_MIN_TEXTS, int(np.ceil(TEMPLATE_SHARE * (len(pool_texts) + len(exclude_texts)))))
    index = {gram: items for gram, items in index.items() if len(items) + rows_with[gram] < common}
    sizes = np.zeros(len(exclude_texts), dtype=np.int64)
    for items in index.values():
        sizes[items] += 1
    overlap = np.zeros(len(pool_texts))
    best = np.full(len(pool_texts), -1, dtype=np.int64)
    for row, grams in enumerate(row_hits):
        hits: dict[int, int] = {}
        for gram in grams:
            for item in index.get(gram, ()):
                hits[item] = hits.get(item, 0) + 1
        if hits:
            items = np.fromiter(hits, dtype=np.int64, count=len(hits))
            shares = np.fromiter(hits.values(), dtype=np.float64, count=len(hits)) / sizes[items]
            top = int(np.argmax(shares))
            overlap[row], best[row] = shares[top], items[top]
    return overlap, best


def max_cosine(pool_vectors: np.ndarray, exclude_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each unit-norm pool vector, its largest cosine similarity to an evaluation vector and that vector's index."""
    cosine = np.empty(len(pool_vectors))
    best = np.empty(len(pool_vectors), dtype=np.int64)
    for start in range(0, len(pool_vectors), _BLOCK):
        scores = pool_vectors[start : start + _BLOCK] @ exclude_vectors.T
        best[start : start + _BLOCK] = scores.argmax(axis=1)
        cosine[start : start + _BLOCK] = scores.max(axis=1)
    return cosine, best


def exclude_render_options(exclude: datasets.Dataset, pool_render: RenderOptions) -> RenderOptions:
    """How evaluation rows become text: their own layout, detected from their columns, with the pool's `include_answer`
    (the `embed_answer` argument)."""
    try:
        return resolve_render_options(exclude.column_names, include_answer=pool_render.include_answer)
    except InvalidArgumentError as err:
        raise InvalidArgumentError(
            f"`exclude_dataset`: {err} Pass the evaluation set as a Dataset with one of these layouts, or as a list of strings."
        ) from None


def as_dataset(exclude) -> datasets.Dataset:
    """`exclude` (the `exclude_dataset` argument) as a Dataset: a Dataset as is (views materialised), a list of strings
    as a `text` column."""
    if isinstance(exclude, datasets.Dataset):
        return exclude.flatten_indices() if exclude._indices is not None else exclude
    if isinstance(exclude, (list, tuple)) and exclude and all(isinstance(t, str) and t.strip() for t in exclude):
        return datasets.Dataset.from_dict({"text": list(exclude)})
    raise InvalidArgumentError(
        f"`exclude_dataset` must be a datasets.Dataset (the evaluation set) or a non-empty list of non-blank strings, got "
        f"{type(exclude).__name__}{' (empty)' if isinstance(exclude, (list, tuple)) and not exclude else ''}."
    )


@dataclass(frozen=True)
class DecontaminationSettings:
    """How pool rows are matched against an evaluation set: the one settings object of `diverse_select`, the trainer
    and the manifest's `decontamination` record. Checked when built.

    The front doors take these as `exclude_ngram`, `exclude_ngram_threshold` and `exclude_cosine_threshold`, and
    errors name them so.

    Args:
        ngram (`int`, *optional*, defaults to `8`):
            Word n-gram length of the overlap test.
        ngram_threshold (`float`, *optional*, defaults to `0.6`):
            Drop a row holding at least this share of one evaluation item's distinct n-grams; `None` skips the test.
        cosine_threshold (`float`, *optional*, defaults to `0.99`):
            Drop a row whose cosine similarity to an evaluation item is at least this; `None` skips the test.

    Raises:
        [`InvalidArgumentError`]: a length or threshold out of range, or both tests off.
    """

    ngram: int = DEFAULT_NGRAM
    ngram_threshold: float | None = DEFAULT_NGRAM_THRESHOLD
    cosine_threshold: float | None = DEFAULT_COSINE_THRESHOLD

    def __post_init__(self):
        from . import checks

        object.__setattr__(
            self, "ngram", checks.check_int(self.ngram, "exclude_ngram", minimum=1, fix=" Pass a word n-gram length such as 8 or 13.")
        )
        if self.ngram_threshold is None and self.cosine_threshold is None:
            raise InvalidArgumentError(
                "`exclude_ngram_threshold` and `exclude_cosine_threshold` are both None: nothing would be excluded. "
                f"Keep at least one (the defaults are {DEFAULT_NGRAM_THRESHOLD} and {DEFAULT_COSINE_THRESHOLD})."
            )
        if self.ngram_threshold is not None:
            object.__setattr__(self, "ngram_threshold", checks.check_number(
                self.ngram_threshold, "exclude_ngram_threshold", above=0, at_most=1,
                fix=" It is the share of an evaluation item's n-grams found in a pool row.",
            ))
        if self.cosine_threshold is not None:
            object.__setattr__(self, "cosine_threshold", checks.check_number(
                self.cosine_threshold, "exclude_cosine_threshold", above=0, at_most=1, fix=" It is a cosine similarity."
            ))

    @classmethod
    def from_arguments(cls, exclude_ngram=DEFAULT_NGRAM, exclude_ngram_threshold=DEFAULT_NGRAM_THRESHOLD,
                       exclude_cosine_threshold=DEFAULT_COSINE_THRESHOLD) -> "DecontaminationSettings":
        """The settings from the front doors' argument names (`exclude_ngram`, `exclude_ngram_threshold`,
        `exclude_cosine_threshold`)."""
        return cls(ngram=exclude_ngram, ngram_threshold=exclude_ngram_threshold, cosine_threshold=exclude_cosine_threshold)

    def to_record(self) -> dict:
        """The settings as the manifest's `decontamination` record holds them (`ngram`, `ngram_threshold`,
        `cosine_threshold`)."""
        return {field.name: getattr(self, field.name) for field in fields(self)}


def decontaminate(
    pool: datasets.Dataset,
    exclude,
    render: RenderOptions,
    *,
    pool_vectors: np.ndarray | None = None,
    exclude_vectors: np.ndarray | None = None,
    settings: DecontaminationSettings | None = None,
    tokenizer: Any = None,
) -> tuple[np.ndarray, dict]:
    """Which pool rows to keep, and a record of those dropped for matching an item of `exclude`.

    Args:
        pool (`datasets.Dataset`):
            The pool.
        exclude (`datasets.Dataset` or `list[str]`):
            The evaluation set.
        render ([`RenderOptions`]):
            How pool rows become text (the selection's).
        pool_vectors (`np.ndarray`, *optional*):
            The pool's unit-norm vectors, one per row; needed with `cosine_threshold`.
        exclude_vectors (`np.ndarray`, *optional*):
            The evaluation items' vectors from the same encoder; needed with a `cosine_threshold`.
        settings ([`DecontaminationSettings`], *optional*):
            The n-gram length and the thresholds; the defaults when `None`.
        tokenizer (`PreTrainedTokenizerBase`, *optional*):
            Chat template for chat rows, as in the selection.

    Returns:
        `tuple[np.ndarray, dict]`: a boolean keep mask over the pool, and the record the manifest stores:
        thresholds, the evaluation set (name, fingerprint, rows), `removed` and, per dropped row, the evaluation
        item it matched with its n-gram share and cosine (`removed_indices`, `matched_items`, `ngram_overlap`, `cosine`).
    """
    settings = DecontaminationSettings() if settings is None else settings
    ngram, ngram_threshold, cosine_threshold = settings.ngram, settings.ngram_threshold, settings.cosine_threshold
    exclude = as_dataset(exclude)
    options = exclude_render_options(exclude, render)
    n = len(pool)
    drop = np.zeros(n, dtype=bool)
    overlap, overlap_item = np.zeros(n), np.full(n, -1, dtype=np.int64)
    cosine, cosine_item = np.full(n, np.nan), np.full(n, -1, dtype=np.int64)
    if ngram_threshold is not None:
        overlap, overlap_item = ngram_overlap(render_texts(pool, render, tokenizer), render_texts(exclude, options, tokenizer), ngram)
        drop |= overlap >= ngram_threshold
    if cosine_threshold is not None:
        if pool_vectors is None or exclude_vectors is None:
            raise InvalidArgumentError("`cosine_threshold` needs `pool_vectors` and `exclude_vectors` from one encoder.")
        cosine, cosine_item = max_cosine(pool_vectors, exclude_vectors)
        drop |= cosine >= cosine_threshold
    removed = np.flatnonzero(drop)
    # The item that made the row go: the n-gram match when there is one, else the nearest by cosine.
    by_ngram = ngram_threshold is not None and overlap[removed] >= ngram_threshold
    matched = np.where(by_ngram, overlap_item[removed], cosine_item[removed])
    record = {
        "exclude": {"name": _name(exclude), "fingerprint": exclude._fingerprint, "num_rows": len(exclude)},
        **settings.to_record(),
        "removed": int(len(removed)),
        "removed_indices": removed.tolist(),
        "matched_items": matched.tolist(),
        "ngram_overlap": [round(float(v), 4) for v in overlap[removed]],
        "cosine": [None if np.isnan(v) else round(float(v), 4) for v in cosine[removed]],
    }
    logger.info(
        "Decontamination dropped %d of %d pool rows matching %d evaluation items", len(removed), n, len(exclude)
    )
    return ~drop, record


def decontaminate_pool(
    pool: datasets.Dataset,
    exclude,
    render: RenderOptions,
    pool_vectors: np.ndarray,
    *,
    encoder: Any = None,
    encoder_revision: str | None = None,
    embedding_column: str | None = None,
    tokenizer: Any = None,
    settings: DecontaminationSettings | None = None,
    **embed_kwargs,
) -> tuple[np.ndarray, dict]:
    """[`decontaminate`] `pool` against `exclude`, embedding `exclude` the way the pool was embedded.

    The evaluation set is embedded with the pool's `encoder` (cached like the pool's vectors; `embed_kwargs` go to
    [`embed.embed_dataset`]), or its vectors are read from the pool's `embedding_column`. Refuses an `exclude` that
    would leave no row.
    """
    from .embed import embed_dataset, embeddings_from_column

    settings = DecontaminationSettings() if settings is None else settings
    exclude = as_dataset(exclude)
    exclude_vectors = None
    if settings.cosine_threshold is not None:
        if embedding_column is not None:
            if embedding_column not in exclude.column_names:
                raise InvalidArgumentError(
                    f"`exclude_dataset` lacks the vector column `embedding_column`={embedding_column!r} of the pool: give it "
                    "vectors from the same encoder, or pass `exclude_cosine_threshold=None` (n-gram overlap only)."
                )
            exclude_vectors = embeddings_from_column(exclude, embedding_column, dim=pool_vectors.shape[1])
        else:
            exclude_vectors, _ = embed_dataset(
                exclude, exclude_render_options(exclude, render), encoder=encoder, revision=encoder_revision,
                tokenizer=tokenizer, **embed_kwargs,
            )
    keep, record = decontaminate(
        pool, exclude, render, pool_vectors=pool_vectors, exclude_vectors=exclude_vectors, settings=settings,
        tokenizer=tokenizer,
    )
    if not keep.any():
        raise InvalidArgumentError(
            f"Every one of the {len(pool)} pool rows matches an item of `exclude_dataset`: nothing is left to select. "
            "Check that `exclude_dataset` is the evaluation set, not the pool."
        )
    return keep, record


def render_texts(dataset: datasets.Dataset, options: RenderOptions, tokenizer) -> list[str]:
    texts = []
    for batch in dataset.select_columns(options.input_columns).iter(batch_size=1000):
        prompts, answers = render_batch(batch, options, tokenizer if options.chat_template else None)
        texts += [f"{p}\n{a}" if a else p for p, a in zip(prompts, answers)]
    return texts


def _name(dataset: datasets.Dataset) -> str | None:
    from .manifest import pool_name

    return pool_name(dataset)
