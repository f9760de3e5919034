"""Cache per-row results (embeddings, quality scores) through datasets' own fingerprint mechanism.

A result is keyed by a fingerprint we build ourselves from the pool's `_fingerprint` and every
option that changes the result, and stored as an Arrow file under datasets' cache folder, so a
second identical call reads the file instead of running the model again. In-memory pools have no
cache folder of their own, hence one fixed folder for all.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

import datasets
from datasets.fingerprint import Hasher

from .errors import InvalidArgumentError

logger = logging.getLogger(__name__)

# Bump when the content of cached results changes meaning, so old files are not reused.
CACHE_VERSION = "hf_idsel-cache-1"


def fingerprint(*parts) -> str:
    """Hash `parts` (JSON-like values) together with the cache version into a fingerprint."""
    return Hasher.hash([CACHE_VERSION, *parts])


def cache_dir(directory: str | None = None) -> str:
    """Folder for hf_idsel's cached Arrow files: `directory` or `HF_DATASETS_CACHE/hf_idsel`."""
    return directory or os.path.join(str(datasets.config.HF_DATASETS_CACHE), "hf_idsel")


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
) -> datasets.Dataset:
    """Run a batched `function` over `dataset` once per `key`; return only the new columns.

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
            Rows per `map` batch (each is one Arrow write).
        desc (`str`):
            Progress bar label.
        directory (`str`, *optional*):
            Cache folder; defaults to [`cache_dir`].
        input_columns (`list[str]`, *optional*):
            Columns `function` reads; the others are not materialised.
        always_write (`bool`, *optional*, defaults to `False`):
            Write the result file even when datasets' caching is off (other processes read it).
    """
    use_cache = datasets.is_caching_enabled() or always_write
    path = None
    if use_cache:
        os.makedirs(cache_dir(directory), exist_ok=True)
        path = cache_file(kind, key, directory)
        if os.path.exists(path):
            logger.info("Loaded %s from cache %s", kind, path)
            return datasets.Dataset.from_file(path)
    source = dataset.select_columns(input_columns) if input_columns else dataset
    return source.map(
        function,
        batched=True,
        batch_size=batch_size,
        remove_columns=source.column_names,
        new_fingerprint=key,
        cache_file_name=path,
        load_from_cache_file=use_cache,
        desc=desc,
    )


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
    """What a model's outputs depend on: its id, its revision, and where it loads from (`None`: the Hub)."""

    id: str
    revision: str
    location: str | None = None


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
