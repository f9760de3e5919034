"""Decontamination: drop pool rows that copy or nearly copy items of an evaluation set.

Two tests, either of which drops a row (thresholds measured on the built-in pool, see docs/method.md):

- word n-gram overlap: the share of an evaluation item's distinct word `ngram`-grams that also occur in the pool row,
  on text normalised so that case, punctuation, width (NFKC), accents and invisible characters do not hide a copy
  ([`words`]). The usual practice (GPT-3, Llama) flags any shared 13-gram; a share of the item's n-grams does not flag
  a row for one shared boilerplate phrase ("the following is a multiple-choice question about ...") yet still catches
  a copy with a few words changed. Items shorter than `ngram` words are found inside rows ([`ngram_overlap`]).
- embedding cosine: the cosine similarity of the row to the item, with the encoder of the selection (its vectors are
  cached like the pool's).

Both compare the text the selection embeds (prompt and answer, or the prompt only with `embed_answer=False`). Their
settings are one [`DecontaminationSettings`], which `diverse_select`, the trainer and the manifest's record share.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import datasets
import numpy as np
from datasets.utils import tqdm as hf_tqdm

from .errors import InvalidArgumentError
from .render import RenderOptions, render_batch, resolve_render_options

logger = logging.getLogger(__name__)

DEFAULT_NGRAM = 8
DEFAULT_NGRAM_THRESHOLD = 0.6
DEFAULT_COSINE_THRESHOLD = 0.99
# An n-gram held by at least this share of the distinct evaluation items, and by at least TEMPLATE_MIN_ITEMS of them,
# is a template; an item shorter than `ngram` words is found inside a row from SHORT_ITEM_MIN_WORDS words on, and a
# shorter one only in a row that is exactly its words (both measured on the built-in pool, see docs/method.md).
TEMPLATE_ITEM_SHARE = 0.01
TEMPLATE_MIN_ITEMS = 2
SHORT_ITEM_MIN_WORDS = 5
_PUNCTUATION = re.compile(r"[^\w\s]")
_ASCII_PUNCTUATION = bytes(c for c in range(128) if not re.match(r"[\w\s]", chr(c)))
_BLOCK = 2048  # pool rows per block of the cosine product
_CHUNK_ROWS = 4096  # pool rows per block of the n-gram test: its memory does not grow with the pool
_HANGUL_FILLERS = (0x115F, 0x1160, 0x3164, 0xFFA0)  # letters by category, drawn blank
_MULTIPLIER = np.uint64(0x100000001B3)


@functools.lru_cache(maxsize=None)
def _invisible() -> dict[int, None]:
    """`str.translate` table deleting format characters (Cf: zero-width spaces and joiners, BOM, soft hyphen, bidi
    controls, tags), combining marks (M*, variation selectors included) and the Hangul fillers. Every code point of
    those categories lies below U+20000 or in plane 14."""
    ranges = (range(0x20000), range(0xE0000, 0xE1000))
    table = {
        c: None for r in ranges for c in r if unicodedata.category(chr(c))[0] == "M" or unicodedata.category(chr(c)) == "Cf"
    }
    return {**table, **dict.fromkeys(_HANGUL_FILLERS)}


def normalize(text: str) -> str:
    """`text` as the n-gram test reads it: compatibility forms folded (NFKC: full-width letters, ligatures,
    superscripts), case folded, and invisible characters and combining marks deleted (zero-width spaces and joiners,
    BOM, soft hyphen; accents: "café", "cafe" and "cafe" with a combining accent read the same). Deleted, not made a
    space, as Unicode word segmentation (UAX #29, rule WB4) ignores format characters inside a word."""
    if text.isascii():
        return text.lower()
    invisible = _invisible()
    # Marks go before case folding too: folding turns one of them (U+0345, the Greek iota subscript) into a letter.
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).translate(invisible).casefold())
    return unicodedata.normalize("NFC", text.translate(invisible))


def words(text: str) -> list[str]:
    """The words of [`normalize`]`(text)` with punctuation deleted ("3.5" -> "35", "don't" -> "dont"): whitespace,
    case, punctuation, width and invisible characters do not hide a copy."""
    if text.isascii():  # the same words, about twice as fast on bytes
        return text.encode().lower().translate(None, _ASCII_PUNCTUATION).decode().split()
    return _PUNCTUATION.sub("", normalize(text)).split()


def _mix(ids: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of word ids: a stable 64-bit hash (the same in every process, unlike `hash(str)`)."""
    x = ids.astype(np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (salt + 1)) % 2**64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash_windows(windows: np.ndarray, salt: int) -> np.ndarray:
    """The hash of each row of `windows` (word ids): a polynomial over their [`_mix`]es, modulo 2**64."""
    h = _mix(windows[:, 0], salt)
    for j in range(1, windows.shape[1]):
        h *= _MULTIPLIER
        h += _mix(windows[:, j], salt)
    return h


def _hash_runs(mixed: np.ndarray, length: int, starts: np.ndarray | None = None) -> np.ndarray:
    """[`_hash_windows`] of the runs of `length` consecutive values of the 1-D `mixed` starting at `starts` (all of
    them when `None`)."""
    if starts is None:
        count = max(len(mixed) - length + 1, 0)
        h = mixed[:count].copy()
        for j in range(1, length):
            h *= _MULTIPLIER
            h += mixed[j : j + count]
        return h
    h = mixed[starts]
    for j in range(1, length):
        h *= _MULTIPLIER
        h += mixed[starts + j]
    return h


@dataclass
class _Grams:
    """The distinct evaluation n-grams of one length, sorted by hash; `anchored` ones match only a whole row."""

    length: int
    anchored: bool
    salt: int
    hashes: np.ndarray  # uint64, ascending, distinct
    ids: np.ndarray  # (grams, length) word ids in the order of `hashes`
    first: int  # the index of its first gram among all lengths'

    def __post_init__(self):
        # A bitmap of the hashes' top bits, about 16 slots per n-gram: a lookup in it turns away most windows that
        # are no evaluation n-gram before the binary search, which costs a cache miss per step.
        bits = max(10, int(np.ceil(np.log2(16 * len(self.hashes)))))
        self.shift = np.uint64(64 - bits)
        self.seen = np.zeros(2**bits, dtype=bool)
        self.seen[self.hashes >> self.shift] = True

    def find(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The positions in `h` of hashes among `hashes`, and their index there."""
        maybe = np.flatnonzero(self.seen[h >> self.shift])
        at = np.minimum(np.searchsorted(self.hashes, h[maybe]), len(self.hashes) - 1)
        hit = self.hashes[at] == h[maybe]
        return maybe[hit], at[hit]


class _ItemIndex:
    """The evaluation items' n-grams, built once: word ids, hashed n-grams by length, the items holding each n-gram
    (CSR), templates, and which n-grams count for which item (its n-grams that are not templates, or all of them)."""

    def __init__(self, exclude_texts: list[str], n: int):
        self.vocabulary: dict[str, int] = {}  # word -> id from 1 (0: a word no item holds, or a row boundary)
        item_ids = []
        for text in exclude_texts:
            item_ids.append(np.array([self.vocabulary.setdefault(w, len(self.vocabulary) + 1) for w in words(text)], np.int32))
        lengths = np.array([len(ids) for ids in item_ids], dtype=np.int64)
        self.num_items = len(item_ids)
        self.too_short = int(((lengths > 0) & (lengths < min(n, SHORT_ITEM_MIN_WORDS))).sum())
        # Identical items count once towards a template: a duplicated item keeps its n-grams.
        distinct: dict[bytes, int] = {}
        group = np.array([distinct.setdefault(ids.tobytes(), len(distinct)) for ids in item_ids], dtype=np.int64)
        self.template_min = max(TEMPLATE_MIN_ITEMS, int(np.ceil(TEMPLATE_ITEM_SHARE * len(distinct))))
        by_length: dict[int, tuple[list[np.ndarray], list[int]]] = {}
        for item, ids in enumerate(item_ids):
            if len(ids) >= n:
                windows = np.lib.stride_tricks.sliding_window_view(ids, n)
                by_length.setdefault(n, ([], []))[0].append(windows)
                by_length[n][1].extend([item] * len(windows))
            elif len(ids):
                by_length.setdefault(len(ids), ([], []))[0].append(ids[None, :])
                by_length[len(ids)][1].append(item)
        self.tables: list[_Grams] = []
        gram_of, item_of = [], []
        for length in sorted(by_length):
            windows = np.concatenate(by_length[length][0])
            table, inverse = self._table(length, length < n and length < SHORT_ITEM_MIN_WORDS, windows)
            gram_of.append(table.first + inverse)
            item_of.append(np.asarray(by_length[length][1], dtype=np.int64))
            self.tables.append(table)
        self.num_grams = sum(len(t.hashes) for t in self.tables)
        gram = np.concatenate(gram_of) if gram_of else np.empty(0, np.int64)
        item = np.concatenate(item_of) if item_of else np.empty(0, np.int64)
        pairs = np.unique(gram * self.num_items + item)  # (gram, item) distinct, by gram then item
        gram, item = pairs // max(self.num_items, 1), pairs % max(self.num_items, 1)
        groups = np.unique(gram * len(distinct) + group[item]) // max(len(distinct), 1)
        self.template = np.bincount(groups, minlength=self.num_grams) >= self.template_min
        # An item's share counts its n-grams that are not templates, or all of them when every one is a template (so
        # that a verbatim copy of any item is always found).
        only_templates = np.bincount(item[~self.template[gram]], minlength=self.num_items) == 0
        self.counted = ~self.template[gram] | only_templates[item]  # per (gram, item) entry
        self.sizes = np.bincount(item[self.counted], minlength=self.num_items)  # the denominators of the shares
        self.useful = np.bincount(gram[self.counted], minlength=self.num_grams) > 0  # counted for some item
        self.items = item  # the items holding each gram: items[indptr[g]:indptr[g + 1]]
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(gram, minlength=self.num_grams))])
        self.only_templates = int((only_templates & (lengths > 0)).sum())

    def _table(self, length: int, anchored: bool, windows: np.ndarray) -> tuple[_Grams, np.ndarray]:
        """The distinct rows of `windows` sorted by hash, and each window's index among them."""
        first = sum(len(t.hashes) for t in self.tables)
        for salt in range(64):
            hashes, index, inverse = np.unique(_hash_windows(windows, salt), return_index=True, return_inverse=True)
            # A hash shared by two different n-grams: try another salt (the pool side checks the words of every hit).
            same = index[inverse]
            if all((windows[:, j] == windows[same, j]).all() for j in range(length)):
                return _Grams(length, anchored, salt, hashes, windows[index], first), inverse.ravel()
        raise RuntimeError("64 salts all gave colliding n-gram hashes")  # pragma: no cover (odds about 2**-1000)

    def row_ids(self, row_words: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Word ids of rows laid end to end, each row followed by a 0; the rows' starts and lengths."""
        lengths = np.fromiter(map(len, row_words), dtype=np.int64, count=len(row_words))
        words_ids = np.fromiter(
            map(self.vocabulary.get, itertools.chain.from_iterable(row_words), itertools.repeat(0)),
            dtype=np.int64, count=int(lengths.sum()),
        )
        starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
        ids = np.zeros(len(words_ids) + len(row_words), dtype=np.int64)
        ids[np.arange(len(words_ids)) + np.repeat(np.arange(len(row_words)), lengths)] = words_ids
        return ids, starts, lengths

    def match(self, row_words: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """For each row, the largest share of one item's counted n-grams it holds, and that item (the lowest-numbered
        one on a tie; -1 when it holds none)."""
        overlap, best = np.zeros(len(row_words)), np.full(len(row_words), -1, dtype=np.int64)
        if not self.tables:
            return overlap, best
        ids, starts, lengths = self.row_ids(row_words)
        zeros = np.concatenate([[0], np.cumsum(ids == 0)])
        mixed: dict[int, np.ndarray] = {}
        rows, grams = [], []
        for table in self.tables:
            if table.salt not in mixed:
                mixed[table.salt] = _mix(ids, table.salt)
            if table.anchored:
                where = starts[lengths == table.length]
                h = _hash_runs(mixed[table.salt], table.length, where)
            else:
                h = _hash_runs(mixed[table.salt], table.length)
                where = np.flatnonzero(zeros[table.length :] == zeros[: len(h)])  # windows of known words in one row
                h = h[where]
            hit, at = table.find(h)
            where = where[hit]
            same = np.ones(len(where), dtype=bool)
            for j in range(table.length):  # the words themselves, so that a hash collision never counts
                same &= ids[where + j] == table.ids[at, j]
            rows.append(np.searchsorted(starts, where[same], side="right") - 1)
            grams.append(table.first + at[same])
        row, gram = np.concatenate(rows), np.concatenate(grams)
        keep = self.useful[gram]
        pairs = np.unique(row[keep] * self.num_grams + gram[keep])  # a row's distinct n-grams
        row, gram = pairs // self.num_grams, pairs % self.num_grams
        counts = self.indptr[gram + 1] - self.indptr[gram]
        entry = np.repeat(self.indptr[gram], counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        counted = self.counted[entry]
        keys, hits = np.unique(np.repeat(row, counts)[counted] * self.num_items + self.items[entry[counted]], return_counts=True)
        if not len(keys):
            return overlap, best
        row, item = keys // self.num_items, keys % self.num_items
        share = hits / self.sizes[item]
        order = np.lexsort((item, -share, row))  # by row, then share descending, then item
        first = order[np.flatnonzero(np.diff(row[order], prepend=-1))]
        overlap[row[first]], best[row[first]] = share[first], item[first]
        return overlap, best


def ngram_overlap(
    pool_texts: Iterable[str], exclude_texts: list[str], n: int = DEFAULT_NGRAM, *, total: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For each pool text, the largest share of one evaluation text's distinct n-grams it contains, and that text.

    Both sides are read as [`words`]. An evaluation text of `n` words or more is its distinct `n`-grams. A shorter one
    is one n-gram of all its words: found anywhere in a pool text (its words in a row) when it has at least
    `SHORT_ITEM_MIN_WORDS` (5) words, else only in a pool text that is exactly its words.

    Templates are decided by the evaluation texts alone, so copies of an item in the pool count for its contamination,
    never against it: an n-gram held by at least `TEMPLATE_MIN_ITEMS` (2) distinct evaluation texts and by at least
    `TEMPLATE_ITEM_SHARE` (1%) of them is a template (the benchmark's "the following is a multiple-choice question
    about", a stem many questions share) and is left out of the shares of the texts holding it, except for a text
    made only of templates, whose share counts all its n-grams. So a pool text holding a verbatim copy of an
    evaluation text of `SHORT_ITEM_MIN_WORDS` words or more (set apart by whitespace) always reaches a share of 1.

    The evaluation side is hashed once (stable 64-bit hashes of word ids, every hit checked word by word); the pool is
    read in blocks of 4,096 texts, so memory does not grow with it and `pool_texts` may be a generator.

    Args:
        pool_texts (`Iterable[str]`):
            The pool's texts.
        exclude_texts (`list[str]`):
            The evaluation items' texts.
        n (`int`, *optional*, defaults to `8`):
            Word n-gram length.
        total (`int`, *optional*):
            The number of pool texts, for the progress bar (`len(pool_texts)` when it has one).

    Returns:
        `tuple[np.ndarray, np.ndarray]`: `(overlap, item)`: float64 shares in [0, 1] and the index of the evaluation
        text that reaches them (the lowest on a tie; -1 when the row shares no n-gram).
    """
    index = _ItemIndex(list(exclude_texts), n)
    if index.too_short:
        logger.info(
            "%d evaluation items have fewer than %d words: each matches only a pool row that is exactly its words.",
            index.too_short, min(n, SHORT_ITEM_MIN_WORDS),
        )
    if index.only_templates:
        logger.info(
            "%d evaluation items are made only of template n-grams (each held by %d or more items): their shares "
            "count all their n-grams.", index.only_templates, index.template_min,
        )
    total = len(pool_texts) if total is None and hasattr(pool_texts, "__len__") else total
    overlap, best = [], []
    texts = iter(pool_texts)
    with hf_tqdm(total=total, desc="Decontaminating (n-grams)", unit=" examples", disable=not total or total <= _CHUNK_ROWS) as bar:
        while chunk := list(itertools.islice(texts, _CHUNK_ROWS)):
            shares, items = index.match([words(text) for text in chunk])
            overlap.append(shares)
            best.append(items)
            bar.update(len(chunk))
    if not overlap:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(overlap), np.concatenate(best)


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
        overlap, overlap_item = ngram_overlap(
            iter_texts(pool, render, tokenizer), list(iter_texts(exclude, options, tokenizer)), ngram, total=n
        )
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


def iter_texts(dataset: datasets.Dataset, options: RenderOptions, tokenizer) -> Iterator[str]:
    """The rows' texts as the n-gram test reads them (prompt, then answer), rendered 1,000 rows at a time."""
    for batch in dataset.select_columns(options.input_columns).iter(batch_size=1000):
        prompts, answers = render_batch(batch, options, tokenizer if options.chat_template else None)
        yield from (f"{p}\n{a}" if a else p for p, a in zip(prompts, answers))


def _name(dataset: datasets.Dataset) -> str | None:
    from .manifest import pool_name

    return pool_name(dataset)
