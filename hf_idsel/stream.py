"""Streamed pools (`datasets.IterableDataset`): read twice, once to embed batch by batch and keep only the vectors and
the columns the selection reads (spooled to temporary Arrow files), once to keep the chosen rows.
"""

from __future__ import annotations

import logging
import numbers
import os
import shutil
import tempfile
from dataclasses import replace

import datasets
import numpy as np
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter
from datasets.utils import tqdm as hf_tqdm

from .arguments import CheckedArguments, SelectArguments, check_arguments, check_values, read_columns
from .cache import StoredVectors, cache_dir
from .embed import batch_encoder, embeddings_from_column
from .errors import IdselError, InvalidArgumentError, error_summary
from .manifest import Manifest, pool_digest
from .methods import vectors_needed
from .pipeline import cluster_and_draw
from .render import check_text_to_embed

logger = logging.getLogger(__name__)

# Rows per pass-one batch of a streamed pool: embed_dataset's chunk, so the encoder sees the same batches
# and a stream gets the vectors (and the selection) of the same rows as a `datasets.Dataset`.
STREAM_BATCH = 1024


def select_stream(stream: datasets.IterableDataset, args: SelectArguments, *, dry_run: bool, return_manifest: bool):
    """[`diverse_select`] of a streamed pool: embed while streaming, then the selection's stages as for a Dataset
    ([`pipeline.cluster_and_draw`]: decontamination, clusters, de-duplication, the draw) on the spooled columns and
    vectors, then a second pass keeps the chosen rows. The temporary files live in the cache folder and are deleted
    at the end."""
    if dry_run:
        raise InvalidArgumentError(
            "`dry_run=True` needs the pool's size, which a streamed pool only knows once read; drop `dry_run`, "
            "or plan on a map-style sample (`datasets.Dataset.from_list(list(stream.take(n)))`)."
        )
    check_values(args)
    os.makedirs(cache_dir(args.cache_dir), exist_ok=True)
    folder = tempfile.mkdtemp(prefix="stream-", dir=cache_dir(args.cache_dir))
    try:
        pool, vectors, identity, features = spool_stream(stream, args, folder)
        checked = check_arguments(pool, args)  # now with the pool's size: budget, k, quality, token counts
        embeddings = vectors
        if vectors is None and vectors_needed(args):
            embeddings = embeddings_from_column(pool, args.embedding_column)
        manifest = cluster_and_draw(pool, args, checked, embeddings, identity)
        subset = chosen_rows(stream, manifest, features, pool)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    logger.info("Selected %d of %d streamed rows with %s (k=%d)", len(subset), manifest.pool["num_rows"], args.method, manifest.k)
    return (subset, manifest) if return_manifest else subset


def spool_stream(stream, args: SelectArguments, folder: str):
    """Pass one: every batch is checked, embedded (float16) and written with the columns the selection reads
    ([`spooled_columns`]).

    Returns `(pool of the read columns, StoredVectors or None, encoder identity or None, the stream's features)`.
    """
    columns_path, vectors_path = os.path.join(folder, "columns.arrow"), os.path.join(folder, "vectors.arrow")
    writer = vector_writer = encode = identity = features = render = None
    n = 0
    try:
        with hf_tqdm(desc="Embedding the streamed pool", unit=" examples") as bar:
            for batch in _batches(stream):
                size = len(next(iter(batch.values())))
                if writer is None:
                    head = datasets.Dataset.from_dict(batch, features=stream.features)
                    features = head.features
                    # The first batch stands in for the pool in every check that does not need its size.
                    checked = check_arguments(head, probe_arguments(args))
                    render, read = checked.render, spooled_columns(args, checked)
                    writer = ArrowWriter(path=columns_path, features=datasets.Features({c: features[c] for c in read}))
                    if args.embedding_column is None and vectors_needed(args):
                        vector_writer = ArrowWriter(path=vectors_path)
                        encode, identity = batch_encoder(
                            args.encoder, render, **args.pick("tokenizer", "device", "trust_remote_code"),
                            batch_size=args.encode_batch_size, revision=args.encoder_revision,
                        )
                part = datasets.Dataset.from_dict({c: batch[c] for c in read}, features=writer._features).data.table
                if encode is not None:
                    check_text_to_embed(part, render)
                    vector_writer.write_batch({"embedding": encode.batch(part.to_pydict(), first_row=n)})
                writer.write_table(part)
                n += size
                bar.update(size)
        if writer is None:
            raise InvalidArgumentError("The pool (`dataset`) is empty; there is nothing to select from.")
        writer.finalize()
        if vector_writer is not None:
            vector_writer.finalize()
    finally:
        for w in (writer, vector_writer):
            if w is not None:
                w.close()
    info = stream.info.copy()
    info.features = None  # the file holds the read columns only; its own schema says which
    pool = datasets.Dataset.from_file(columns_path, info=info)
    vectors = None
    if vector_writer is not None:
        vectors = StoredVectors(datasets.Dataset.from_file(vectors_path).data.table.column("embedding"))
        if getattr(args.encoder, "projection", None) is not None:  # fitted on the whole pool, as embed_dataset does
            vectors = args.encoder.project(np.asarray(vectors))
    return pool, vectors, identity, features


def _batches(stream):
    """`stream`'s batches of `STREAM_BATCH` rows; a shard that cannot be read as the stream's columns (data files with
    other columns or types, a corrupt file) ends the selection with an error naming the row it stopped at."""
    batches, rows = stream.iter(batch_size=STREAM_BATCH), 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (ValueError, pa.ArrowException, datasets.exceptions.DatasetGenerationError) as err:
            reason = error_summary(err)
            raise InvalidArgumentError(
                f"The streamed pool (`dataset`) could not be read after row {rows}: {reason}. Its data files must "
                "all have the same columns and types: fix or leave out the odd file, or pass `features=` when loading it."
            ) from None
        rows += len(next(iter(batch.values()), []))
        yield batch


def probe_arguments(args: SelectArguments) -> SelectArguments:
    """`args` for checking the first batch of a stream: a row budget or `k` above one batch is judged later."""
    def fits(value):
        return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1

    return replace(args, budget=1 if fits(args.budget) else args.budget, k=1 if fits(args.k) else args.k)


def spooled_columns(args: SelectArguments, checked: CheckedArguments) -> list[str]:
    """The columns pass one keeps: every column a stage of the selection reads, no other. The rendered text (also the
    text that decontamination and the cluster descriptions read next to precomputed vectors), the vectors, the
    quality scores and the sources."""
    columns = read_columns(args, checked.render)
    if checked.text is not None:
        columns += checked.text.input_columns
    if args.source_column is not None:
        columns.append(args.source_column)
    return list(dict.fromkeys(columns))


def chosen_rows(stream, manifest: Manifest, features, pool: datasets.Dataset) -> datasets.Dataset:
    """Pass two: keep the chosen rows (all columns), in pool order, and check they are the rows pass one saw (every
    spooled column of `pool`)."""
    chosen = np.asarray(manifest.selected_indices, dtype=np.int64)  # ascending
    parts, seen = [], 0
    with hf_tqdm(total=manifest.pool["num_rows"], desc="Keeping the chosen rows", unit=" examples") as bar:
        for batch in _batches(stream):
            size = len(next(iter(batch.values())))
            lo, hi = np.searchsorted(chosen, [seen, seen + size])
            if hi > lo:
                rows = (chosen[lo:hi] - seen).tolist()
                parts.append(datasets.Dataset.from_dict({c: [v[i] for i in rows] for c, v in batch.items()}, features=features))
            seen += size
            bar.update(size)
    subset = datasets.concatenate_datasets(parts) if parts else datasets.Dataset.from_dict({}, features=features)
    spooled = pool.column_names
    if seen != manifest.pool["num_rows"] or pool_digest(subset, spooled) != pool_digest(pool.select(chosen), spooled):
        raise IdselError(
            f"The streamed pool gave other rows on its second pass ({seen} rows, {manifest.pool['num_rows']} on the "
            "first, or other content at the chosen positions): the selection needs a stream that repeats itself. "
            "Do not shuffle it (or fix its seed and epoch), or load it as a map-style Dataset."
        )
    subset = subset.add_column("source_index", chosen.tolist())
    return subset.add_column("cluster", list(manifest.selected_clusters))
