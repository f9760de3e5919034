"""Cache per-row results (embeddings, quality scores, token counts) as Arrow files.

A result is keyed by a fingerprint we build ourselves from the pool's `_fingerprint` and every
input that shapes the result, and stored as an Arrow file under datasets' cache folder, so a
second identical call reads the file instead of running the model again. In-memory pools have no
cache folder of their own, hence one fixed folder for all.

Files are written under a temporary name and moved into place when complete, with their key in
the schema metadata and the sha256 of their bytes in a file beside them (`<file>.sha256`). On read,
a file must match that digest (a payload edited, truncated or swapped after it was written is not
trusted because it is well-formed), carry the expected key, have one row per input row and pass the
result's own content check; anything else is logged, deleted and recomputed.

Vectors are stored as float16 (half the disk and memory of float32) and read through
[`StoredVectors`]: zero-copy views of the (memory-mapped) Arrow buffers, normalised to unit length
(in float64, returned as float32) for the rows actually read, so a pool larger than RAM is read in chunks.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import datasets
import numpy as np
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter
from datasets.fingerprint import Hasher
from datasets.table import InMemoryTable
from datasets.utils import tqdm as hf_tqdm

from .errors import InvalidArgumentError


try:  # POSIX: a lock tells a cache file being written from one that a killed run left behind
    import fcntl
except ImportError:  # Windows: an unfinished file counts as abandoned once a day passes without writes
    fcntl = None

logger = logging.getLogger(__name__)

# Bump when the content of cached results changes meaning, so old files are not reused.
CACHE_VERSION = "hf_idsel-cache-2"
_PARTIAL_SUFFIX = ".incomplete"
_DIGEST_SUFFIX = ".sha256"  # beside each cached file: the sha256 of its bytes as written
_ABANDONED_AFTER_SECONDS = 24 * 3600


def fingerprint(*parts) -> str:
    """Hash `parts` (JSON-like values) together with the cache version into a fingerprint."""
    return Hasher.hash([CACHE_VERSION, *parts])


def cache_dir(directory: str | None = None) -> str:
    """Folder for hf_idsel's cached Arrow files: `directory` or `HF_DATASETS_CACHE/hf_idsel`."""
    return directory or os.path.join(str(datasets.config.HF_DATASETS_CACHE), "hf_idsel")


def check_cache_dir(directory: str | None = None, argument: str = "cache_dir") -> None:
    """Refuse a cache folder that cannot be written before any work: a file (or a file on its path), or a folder (or
    the nearest existing folder above it) where no file can be created.

    Raises:
        [`InvalidArgumentError`]: naming `argument` and the fix.
    """
    folder = os.path.abspath(cache_dir(os.fspath(directory) if directory is not None else None))
    existing = folder
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    fix = f"pass another `{argument}`, or keep_in_memory=True to write no cache file"
    if not os.path.isdir(existing):
        raise InvalidArgumentError(f"`{argument}`={directory!r}: {existing!r} is not a folder, so no cache can be written there; {fix}.")
    try:  # by trying: permissions alone do not tell (root, read-only mounts, sysfs)
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise InvalidArgumentError(
            f"`{argument}`={directory!r}: the folder {existing!r} is not writable ({err.strerror or err}); {fix}."
        ) from None


# The errors of a cache folder that a user fixes by choosing another one (rather than bugs): reported naming it.
_FOLDER_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST)


def cache_file(kind: str, key: str, directory: str | None = None) -> str:
    """Path of the cached Arrow file of result `kind` under fingerprint `key`."""
    return os.path.join(cache_dir(directory), f"{kind}-{key}.arrow")


def cached_map(
    dataset: datasets.Dataset,
    function: Callable[[dict], dict],
    *,
    kind: str,
    key: str,
    batch_size: int,
    desc: str,
    directory: str | None = None,
    input_columns: list[str] | None = None,
    always_write: bool = False,
    check: Callable[[pa.Table], str | None] | None = None,
    load_from_cache_file: bool = True,
    keep_in_memory: bool = False,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """Run a batched `function` over `dataset` once per `key`; return only the new columns.

    A cached result is used only when it passes [`read_cached`]'s checks; otherwise it is logged,
    deleted and recomputed. A new result is written atomically (see [`write_cached`]).

    Args:
        dataset (`datasets.Dataset`):
            The rows to process.
        function (`Callable`):
            Batched map function returning the new columns.
        kind (`str`):
            Name of the result, used in the file name (`"embeddings"`, `"quality"`).
        key (`str`):
            Fingerprint of everything the result depends on (see [`fingerprint`]).
        batch_size (`int`):
            Rows per `function` call (each is one Arrow write).
        desc (`str`):
            Progress bar label.
        directory (`str`, *optional*):
            Cache folder; defaults to [`cache_dir`].
        input_columns (`list[str]`, *optional*):
            Columns `function` reads; the others are not materialised.
        always_write (`bool`, *optional*, defaults to `False`):
            Write the result file even when datasets' caching is off (other processes read it).
        check (`Callable[[pa.Table], str | None]`, *optional*):
            Extra check of a cached result's content (e.g. finite vectors); returns what is wrong, or `None`.
        load_from_cache_file (`bool`, *optional*, defaults to `True`):
            As in `datasets.Dataset.map`: `False` recomputes the result (and rewrites the cache file).
        keep_in_memory (`bool`, *optional*, defaults to `False`):
            As in `datasets.Dataset.map`: compute in memory and write no cache file (unless `always_write`).
        num_proc (`int`, *optional*):
            As in `datasets.Dataset.map`: processes that run `function` (a picklable one).
    """
    use_cache = (datasets.is_caching_enabled() and not keep_in_memory) or always_write
    if use_cache and load_from_cache_file:
        cached = read_cached(kind, key, rows=len(dataset), directory=directory, check=check)
        if cached is not None:
            return cached
    source = dataset.select_columns(input_columns) if input_columns else dataset
    if len(source) == 0:  # nothing to call `function` on; datasets keeps the empty schema
        return source.remove_columns(source.column_names)
    if num_proc is not None and num_proc > 1:
        mapped = source.map(
            function, batched=True, batch_size=batch_size, num_proc=num_proc, remove_columns=source.column_names,
            keep_in_memory=True, desc=desc,
        )
        batches = [mapped.data.table]
    else:
        batches = _map_batches(source, function, batch_size, desc)
    if use_cache:
        return write_cached(kind, key, batches, directory=directory)
    stream = pa.BufferOutputStream()
    _write_stream(stream, key, batches)
    return datasets.Dataset(InMemoryTable(pa.ipc.open_stream(stream.getvalue()).read_all()))


def _map_batches(source: datasets.Dataset, function: Callable[[dict], dict], batch_size: int, desc: str):
    with hf_tqdm(total=len(source), desc=desc, unit=" examples") as bar:
        for batch in source.iter(batch_size=batch_size):
            yield function(batch)
            bar.update(len(next(iter(batch.values()))))


def read_cached(
    kind: str,
    key: str,
    *,
    rows: int,
    directory: str | None = None,
    check: Callable[[pa.Table], str | None] | None = None,
) -> datasets.Dataset | None:
    """The cached result `kind` under `key` if it exists and is sound, else `None`.

    Sound means: it reads as Arrow, it was written under `key` (stored in its schema metadata, so a
    file copied or left over from other input is refused), it has `rows` rows, and `check` finds
    nothing wrong. An unsound file is logged as a warning naming it, deleted, and `None` returned,
    so the caller recomputes it.

    Args:
        kind (`str`):
            Name of the result (`"embeddings"`, `"quality"`, `"tokens"`).
        key (`str`):
            Fingerprint the result was stored under.
        rows (`int`):
            Number of rows the result must have (one per input row).
        directory (`str`, *optional*):
            Cache folder; defaults to [`cache_dir`].
        check (`Callable[[pa.Table], str | None]`, *optional*):
            Extra check of the content; returns what is wrong, or `None`.
    """
    path = cache_file(kind, key, directory)
    if not os.path.exists(path):
        return None
    try:
        result = datasets.Dataset.from_file(path)
        problem = _entry_problem(result.data.table, key, rows, check, lambda: _digest_problem(path))
    except Exception as err:  # truncated, not Arrow, unreadable metadata: all mean "recompute"
        problem = f"it cannot be read ({type(err).__name__}: {err})"
    if problem is None:
        logger.info("Loaded %s from cache %s", kind, path)
        return result
    logger.warning("Discarding the cached %s file %s: %s. Recomputing it.", kind, path, problem)
    for stale in (path, path + _DIGEST_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            os.remove(stale)
    return None


def file_sha256(path: str) -> str:
    """`sha256:<hex>` of a file's bytes, read in blocks (a memory-mapped cache file is never read whole)."""
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def _digest_problem(path: str) -> str | None:
    """What is wrong with a cached file's bytes against the digest stored when it was written, or `None`."""
    try:
        with open(path + _DIGEST_SUFFIX, encoding="utf-8") as f:
            stored = f.read().strip()
    except FileNotFoundError:
        return "it has no stored content digest (written by an older hf_idsel, or its digest file was removed)"
    except (OSError, UnicodeDecodeError) as err:
        return f"its content digest cannot be read ({type(err).__name__})"
    actual = file_sha256(path)
    if stored != actual:
        return f"its bytes do not match the digest stored when it was written ({stored[:19]}..., now {actual[:19]}...)"
    return None


def _entry_problem(table: pa.Table, key: str, rows: int, check, digest_problem) -> str | None:
    metadata = json.loads((table.schema.metadata or {}).get(b"huggingface", b"{}"))
    stored = metadata.get("fingerprint")
    if stored != key:
        return f"it was written for other input (key {stored}, expected {key})"
    if table.num_rows != rows:
        return f"it has {table.num_rows} rows, the dataset has {rows}"
    problem = digest_problem()  # the bytes as written: a well-formed payload edited afterwards is caught here
    if problem is None and check is not None:
        problem = check(table)
    return problem


def write_cached(kind: str, key: str, parts: Iterable[dict | pa.Table], *, directory: str | None = None) -> datasets.Dataset:
    """Write `parts` (batches as dicts of columns, or Arrow tables) as the cached result `kind` under `key`.

    The file is written under a temporary name in the cache folder and moved into place only when
    complete, so readers never see half a file; `key` is stored in its schema metadata for
    [`read_cached`] to compare. If writing fails the temporary file is deleted, and one left by a
    killed process is deleted by the next write into the same folder.

    Returns:
        `datasets.Dataset`: the written result, memory-mapped from its file.
    """
    path = cache_file(kind, key, directory)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with _partial_file(path) as file:
            _write_stream(pa.PythonFile(file, mode="w"), key, parts)
    except OSError as err:
        if err.errno not in _FOLDER_ERRORS:
            raise
        raise InvalidArgumentError(
            f"`cache_dir`: could not write the cache file {path!r} ({err.strerror or err}); nothing was left behind. "
            "Free space there, pass another `cache_dir`, or keep_in_memory=True to write no cache file."
        ) from None
    return datasets.Dataset.from_file(path)


def _write_stream(stream: pa.NativeFile, key: str, parts: Iterable[dict | pa.Table]) -> None:
    writer = ArrowWriter(stream=stream, fingerprint=key)
    try:
        for part in parts:
            if isinstance(part, pa.Table):
                writer.write_table(part)
            else:
                writer.write_batch(part)
        writer.finalize(close_stream=False)
    finally:
        writer.close()


@contextlib.contextmanager
def _partial_file(path: str):
    """A new temporary file next to `path`, moved onto `path` when the block succeeds and deleted otherwise.

    While it is written, the file is locked (where the filesystem has `flock`), which tells a live
    writer's file from one a killed process left behind; the latter are deleted here first.
    """
    folder = os.path.dirname(path)
    _remove_abandoned_partials(folder)
    while True:
        fd, partial = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=_PARTIAL_SUFFIX, dir=folder)
        locked = _lock(fd, wait=True)
        if not locked or os.fstat(fd).st_nlink:
            break
        os.close(fd)  # another process's clean-up took it between creation and locking: make another
    file = os.fdopen(fd, "wb")
    try:
        yield file
        file.flush()
        os.fsync(file.fileno())
        _write_digest(path, file_sha256(partial))
        if not locked:
            file.close()  # Windows cannot rename an open file
        # When locked, renamed before the lock goes, so no clean-up can take it for abandoned.
        os.replace(partial, path)
    finally:
        try:
            file.close()  # flushes what is buffered: on a full disk this fails too
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(partial)


def _write_digest(path: str, digest: str) -> None:
    """Store `digest` beside `path`, atomically. Written before the data file moves into place: a reader that
    finds the new digest beside the old file sees a mismatch and recomputes, never a wrong payload."""
    partial = f"{path}{_DIGEST_SUFFIX}.{os.getpid()}.tmp"  # not `.incomplete`: the lock-based clean-up is for data files
    with open(partial, "w", encoding="utf-8") as f:
        f.write(digest)
    os.replace(partial, path + _DIGEST_SUFFIX)


def _lock(fd: int, *, wait: bool) -> bool | None:
    """Lock `fd` exclusively: `True` when locked, `False` when another process holds it (only without
    `wait`), `None` where there are no locks (Windows, network filesystems without them)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _remove_abandoned_partials(folder: str) -> None:
    for name in os.listdir(folder):
        if not name.endswith(_PARTIAL_SUFFIX):
            continue
        partial = os.path.join(folder, name)
        try:
            with open(partial, "r+b") as file:
                locked = _lock(file.fileno(), wait=False)
                if locked:
                    os.remove(partial)  # while locked: a writer that just created it sees this and makes another
            if locked is None:  # no locks here: only a day without writes tells that it was abandoned
                if time.time() - os.stat(partial).st_mtime < _ABANDONED_AFTER_SECONDS:
                    continue
                os.remove(partial)
            elif not locked:
                continue  # a live process is writing it
        except OSError:  # already gone, or not ours to delete
            continue
        logger.warning("Removed %s, an unfinished cache file left by an interrupted run.", partial)


STORED_VECTOR_DTYPE = np.float16  # the cached embeddings' entry format; float32 files are older entries


_UNIT_ROWS_CHUNK = 65_536  # rows normalised at a time: the float64 copy stays small


def unit_rows(block) -> np.ndarray:
    """`block` (`(m, d)` floats of any precision) as float32 rows scaled to unit length.

    The one normalisation of the library, computed in float64 (a float32 norm overflows for entries
    past ~1e19 and underflows below ~1e-19, turning such rows into zeros or NaN) a chunk at a time,
    so float16 storage gives the same vectors on every read, every rank and every run. All-zero rows
    have no direction and are refused.
    """
    x = np.asarray(block)
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, len(x), _UNIT_ROWS_CHUNK):
        part = np.asarray(x[start : start + _UNIT_ROWS_CHUNK], dtype=np.float64)
        norms = np.linalg.norm(part, axis=1, keepdims=True)
        zero = np.flatnonzero(norms[:, 0] == 0)
        if len(zero):
            raise InvalidArgumentError(
                f"{len(zero)} vector(s) are all zeros (first: row {start + int(zero[0])} of the block read), and have "
                "no direction to cluster on: drop those rows or fix what produced their vectors."
            )
        out[start : start + len(part)] = part / norms
    return out


class StoredVectors:
    """An `(n, d)` matrix kept in an Arrow column of float lists, read as unit-norm float32 rows.

    Nothing is copied up front: each Arrow chunk is a zero-copy numpy view (of the memory-mapped file
    when the table was read from disk), and indexing (`x[a:b]`, `x[row_ids]`) upcasts and normalises
    only the rows asked for (see [`unit_rows`]). `np.asarray(x)` reads every row, for the consumers
    that need the whole float32 matrix (greedy baselines, de-duplication) on pools that fit in memory.

    Args:
        column (`pa.ChunkedArray` or `pa.Array`):
            Lists of one length (list, large list or fixed-size list) of floats without missing values.
    """

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, column):
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        self._column = column  # keeps the buffers (and the file's memory map) alive
        self._blocks = [_chunk_matrix(chunk) for chunk in chunks if len(chunk)]
        dims = {block.shape[1] for block in self._blocks}
        if len(dims) > 1:
            raise InvalidArgumentError(f"The stored vectors have dimensions {sorted(dims)}; all must have one dimension.")
        sizes = [len(block) for block in self._blocks]
        self._starts = np.cumsum([0, *sizes])
        self.shape = (int(self._starts[-1]), dims.pop() if dims else 0)

    @property
    def storage_dtype(self) -> np.dtype:
        return self._blocks[0].dtype if self._blocks else np.dtype(STORED_VECTOR_DTYPE)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored values (float16: half a float32 matrix)."""
        return sum(block.nbytes for block in self._blocks)

    def __len__(self) -> int:
        return self.shape[0]

    def raw(self, key) -> np.ndarray:
        """Rows `key` (a slice or row numbers) as stored, without normalising."""
        n = self.shape[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return self.raw(np.arange(start, stop, step))
            parts = []
            for i, block in enumerate(self._blocks):
                lo, hi = max(start, self._starts[i]), min(stop, self._starts[i + 1])
                if lo < hi:
                    parts.append(block[lo - self._starts[i] : hi - self._starts[i]])
            if not parts:
                return np.empty((0, self.shape[1]), dtype=self.storage_dtype)
            return parts[0] if len(parts) == 1 else np.concatenate(parts)
        rows = np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64, copy=False).reshape(-1)
        if len(rows) and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"row numbers out of range for {n} stored vectors")
        rows = np.where(rows < 0, rows + n, rows)
        out = np.empty((len(rows), self.shape[1]), dtype=self.storage_dtype)
        which = np.searchsorted(self._starts, rows, side="right") - 1
        for i in np.unique(which):
            mask = which == i
            out[mask] = self._blocks[i][rows[mask] - self._starts[i]]
        return out

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return unit_rows(self.raw([key]))[0]
        return unit_rows(self.raw(key))

    def __array__(self, dtype=None, copy=None):
        matrix = self[:]
        return matrix if dtype is None else matrix.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"StoredVectors(shape={self.shape}, stored as {self.storage_dtype})"


def _chunk_matrix(chunk: pa.Array) -> np.ndarray:
    """A zero-copy `(rows, d)` numpy view of one Arrow chunk of equal-length float lists."""
    values = chunk.flatten()  # honours the chunk's offset and list offsets
    if values.null_count:
        raise InvalidArgumentError("The stored vectors hold missing values.")
    try:
        flat = values.to_numpy(zero_copy_only=True)
    except pa.ArrowInvalid:  # a type numpy cannot view (e.g. float16 with a validity buffer): copy it
        flat = values.to_numpy(zero_copy_only=False)
    if len(chunk) == 0:
        return flat.reshape(0, 0)
    if flat.size % len(chunk):
        raise InvalidArgumentError("The stored vectors have different lengths; all must have one dimension.")
    return flat.reshape(len(chunk), -1)


def folder_revision(path: str) -> str:
    """A revision string for a local model folder (or file): hash of file names, sizes and mtimes."""
    if os.path.isfile(path):
        stat = os.stat(path)
        entries = [(os.path.basename(path), stat.st_size, stat.st_mtime_ns)]
    else:
        entries = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                stat = os.stat(full)
                entries.append((os.path.relpath(full, path), stat.st_size, stat.st_mtime_ns))
    return "local-" + Hasher.hash(entries)


def hub_revision(repo_id: str, revision: str | None = None) -> str:
    """The commit hash of a Hub model already in the local cache, or `revision`/"unknown" offline."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except Exception:  # not cached locally: the loader will raise its own, clearer error
        return revision or "unknown"
    return os.path.basename(os.path.normpath(path))


def parameter_checksum(module) -> str:
    """A cheap checksum of a torch module's weights, so an edited in-memory model misses the cache."""
    import torch

    total, count, dtypes = 0.0, 0, set()
    with torch.no_grad():
        for parameter in module.parameters():
            total += parameter.detach().abs().sum(dtype=torch.float64).item()
            count += parameter.numel()
            dtypes.add(str(parameter.dtype))
    return f"params-{count}-{total:.10e}-{'+'.join(sorted(dtypes))}"


@dataclass(frozen=True)
class ModelIdentity:
    """What a model's outputs depend on: its id, its revision, where it loads from (`None`: the Hub), and
    `settings` (sorted `(name, value)` pairs such as a hidden-state encoder's layer and pooling; empty for
    sentence encoders), which enter cache keys and manifests."""

    id: str
    revision: str
    location: str | None = None
    settings: tuple = ()


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped inside a PyPI wheel, found without importing its package.

    Args:
        id (`str`): the Hub id the packaged copy stands for.
        module (`str`): the package that holds it.
        distribution (`str`): the wheel's name; its version is the model's revision.
        path (`str`): the model folder or file inside the package.
    """

    id: str
    module: str
    distribution: str
    path: str

    def location(self) -> str | None:
        return package_file(self.module, self.path)


def package_file(module: str, path: str) -> str | None:
    """Path of `path` (a file or folder, "/"-separated) inside installed package `module`, found without
    importing the package; `None` when the package or the path is missing."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    full = os.path.join(list(spec.submodule_search_locations)[0], *path.split("/"))
    return full if os.path.exists(full) else None


def looks_like_path(model: str) -> bool:
    return os.path.exists(model) or model.startswith(("/", "./", "../", "~", ".\\")) or model.endswith(".gguf")


def model_identity(
    model: Any, revision: str | None = None, *, packaged: dict | None = None, argument: str = "model"
) -> ModelIdentity:
    """Identify a model (an encoder, a reference LM) for cache keys and manifests without loading its weights.

    Args:
        model (`str`, `os.PathLike` or `torch.nn.Module`):
            A Hub id, a local folder or file, or a loaded model.
        revision (`str`, *optional*):
            The Hub revision asked for, if any.
        packaged (`dict[str, PackagedModel]`, *optional*):
            Names that resolve to a copy packaged in a wheel (used when no revision is pinned).
        argument (`str`, *optional*, defaults to `"model"`):
            The argument named in errors.

    Returns:
        [`ModelIdentity`]: a packaged copy is `(its Hub id, "<wheel>==<version>", its path)`; a local
        path is its absolute path and a hash of its file names, sizes and mtimes; a Hub id gets the
        commit of its snapshot in the local cache, else `revision` or `"unknown"`; a model object
        gets its `_name_or_path` and a checksum of its parameters.
    """
    if hasattr(model, "parameters") and callable(model.parameters):  # a loaded torch model; torch stays unimported otherwise
        first = model[0] if hasattr(model, "__getitem__") else model  # a SentenceTransformer's transformer
        config = getattr(getattr(first, "auto_model", first), "config", None)
        name = getattr(config, "_name_or_path", None) or type(model).__name__
        return ModelIdentity(str(name), revision or parameter_checksum(model))
    if not isinstance(model, (str, os.PathLike)):
        raise InvalidArgumentError(
            f"`{argument}` must be a Hub id, a local path or a loaded model, got {type(model).__name__}."
        )
    model = os.fspath(model)
    entry = (packaged or {}).get(model)
    location = entry.location() if entry is not None and revision is None else None
    if location is not None:
        return ModelIdentity(entry.id, f"{entry.distribution}=={importlib.metadata.version(entry.distribution)}", location)
    if looks_like_path(model):
        path = os.path.abspath(os.path.expanduser(model))
        if not os.path.exists(path):
            raise InvalidArgumentError(f"`{argument}`={model!r} looks like a local path but does not exist.")
        return ModelIdentity(path, revision or folder_revision(path), path)
    return ModelIdentity(model, hub_revision(model, revision), None)
