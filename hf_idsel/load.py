"""load_selection: the subset a manifest describes, rebuilt from its pool (local, or read from the Hub), checked
against the manifest's digests; or, with `recompute=True`, the selection re-run and compared.
"""

from __future__ import annotations

import logging
import numbers
import os
import re
from dataclasses import fields

import datasets

from . import checks, hidden_states, methods
from .arguments import (
    ADDED_COLUMNS,
    MAX_NAME_LENGTH,
    ALIASES,
    OLD_NAMES,
    RECORDED_ARGUMENTS,
    REPLAY_FROM_CALLER,
    SelectArguments,
    check_values,
    take_aliases,
    take_old_names,
)
from .sample import resolve_budget
from .embed import DEFAULT_ENCODER
from .errors import IdselError, InvalidArgumentError, SelectionMismatchError, error_summary
from .hub_layout import DEFAULT_CONFIG, check_repo_id, manifest_path
from .manifest import Manifest, selection_subset
from .pool import BUILTIN_POOL, BUILTIN_POOL_NAME, load_pool_source
from .provenance import is_local_path, pool_reference
from .select import diverse_select
from .target import as_target_dataset, target_digest

logger = logging.getLogger(__name__)


def load_selection(
    manifest,
    pool: datasets.Dataset | None = None,
    *,
    config: str | None = None,
    revision: str | None = None,
    token=None,
    recompute: bool = False,
    **overrides,
):
    """Rebuild the subset a manifest describes from its pool: exactly the recorded rows, or an error.

    What is checked: the manifest's fields (types, ranges, consistency) and the digests of its row ids
    and cluster ids; the pool's size; the content of every column of `pool` against the digests the
    manifest records, so each column of the returned subset is the one the selection saw (a changed
    column is named). A column the manifest does not record is refused: leave it out of `pool`.

    A manifest written before hf_idsel recorded column and cluster digests (format_version 1) is still
    loaded and gives the same rows: its digests cover the row ids and the columns the selection read
    (the text, or the vectors of `embedding_column`, and `quality_column`), not the other columns nor
    the cluster ids; those are returned with a logged warning naming them (`recompute=True` checks the
    cluster ids). Digests are checksums, not signatures: they catch a changed pool or a corrupt or
    edited manifest field, not a manifest whose fields and digests were rewritten together.

    Nothing in a manifest turns on `trust_remote_code` or chooses code to run: with `recompute=True`,
    `trust_remote_code` is only what you pass, and an encoder the manifest names (other than the
    default, which `diverse_select` uses anyway) is loaded only when you pass it as `encoder=`.

    Args:
        manifest (`Manifest`, `dict`, `str`):
            A manifest, the path of its JSON file (or a folder holding `manifest.json`), or the id
            of a Hub dataset repo made by `push_selection` or `IterativeSelectionTrainer`.
        pool (`datasets.Dataset`, *optional*):
            The pool the selection was made on. Default: the pool built again from the reference the manifest
            records ([`load_recorded_pool`]: the built-in pool's recipe with its seed and sample, a Hub dataset at
            its config, split and revision, a local file at its path). A pool made from a local file that is not on
            this machine must be passed (the error names the file and its content digest).
        config (`str`, *optional*):
            For a Hub repo: the config to rebuild (`"round_2"`); default: the repo's default config.
        revision (`str`, *optional*):
            For a Hub repo: the revision to read the manifest from.
        token (`str`, *optional*):
            Hub token for private repos.
        recompute (`bool`, *optional*, defaults to `False`):
            Re-run the whole selection (embed, cluster, sample) with the manifest's arguments and
            check that it gives the same rows and cluster ids, instead of taking the recorded ones.
        overrides:
            With `recompute=True` only: the arguments of the re-run that are yours, not the manifest's:
            `tokenizer`, `device`, `cache_dir`, `encode_batch_size` and the map settings (not recorded), `exclude_dataset`
            (the evaluation set, required when the manifest records a decontamination), `target_dataset` (or
            `target`: the target examples, required when the manifest records a target, and checked against its
            digest before anything runs), `trust_remote_code`
            (never taken from a manifest; defaults to `False`), and `encoder` / `encoder_revision`.
            Passing `encoder=` is your consent to load that encoder: a manifest that names another
            encoder than the default is re-run only with it (`encoder_revision` defaults to the
            manifest's when you pass the encoder it names).

    Returns:
        `datasets.Dataset`: the subset, with `source_index` and `cluster`.

    Raises:
        [`InvalidArgumentError`]: no such manifest, a malformed one, a bad argument, or a re-run that needs
            your consent (the message says what to pass).
        [`SelectionMismatchError`]: the pool, or the manifest's rows or cluster ids, differ from what the
            manifest records; the message names what changed.
    """
    if not isinstance(recompute, bool):
        raise InvalidArgumentError(f"`recompute`={recompute!r} must be True or False.")
    if overrides and not recompute:
        raise InvalidArgumentError(
            f"{sorted(overrides)} only apply to a re-run: pass `recompute=True`, or leave them out."
        )
    manifest = _read_manifest(manifest, config=config, revision=revision, token=token)
    manifest.check_integrity()
    replay = _replay_arguments(manifest, overrides) if recompute else None
    rebuilt = pool is None
    if rebuilt:
        pool = _load_recorded_pool(manifest, token)
    if not isinstance(pool, datasets.Dataset):
        raise InvalidArgumentError(f"`pool` must be a datasets.Dataset, got {type(pool).__name__}.")
    clash = [c for c in ADDED_COLUMNS if c in pool.column_names]
    if clash:
        raise InvalidArgumentError(
            f"`pool` has column(s) {clash} that the subset adds: pass the pool the selection was made on, not a subset."
        )
    if pool._indices is not None:
        pool = pool.flatten_indices()
    if rebuilt:
        _check_rebuilt_pool(manifest, pool)
    else:
        manifest.check_pool(pool)
    if recompute:
        return _recompute(manifest, pool, replay)
    return selection_subset(pool, manifest.selected_indices, manifest.selected_clusters)


# What `load_selection(..., recompute=True)` takes from its caller rather than from the manifest, by current or old name.
_CALLER_ARGUMENTS = (
    *REPLAY_FROM_CALLER,
    *(name for name, new in {**OLD_NAMES, **ALIASES}.items() if new in REPLAY_FROM_CALLER),
)


def _replay_arguments(manifest: Manifest, overrides: dict) -> dict:
    """The `diverse_select` arguments of a re-run: the manifest's, but never its `trust_remote_code`, and
    its encoder only when it is the default or the caller passes it."""
    not_theirs = sorted(set(overrides) - set(_CALLER_ARGUMENTS))
    if not_theirs:
        raise InvalidArgumentError(
            f"load_selection(..., recompute=True) got {not_theirs}: the re-run takes the manifest's arguments; "
            f"only {list(_CALLER_ARGUMENTS)} may be passed."
        )
    given = overrides
    current = {name: value for name, value in given.items() if name not in OLD_NAMES and name not in ALIASES}
    overrides = take_old_names(current, {name: given[name] for name in given if name in OLD_NAMES})
    overrides = take_aliases(overrides, {name: given[name] for name in given if name in ALIASES})
    if manifest.method not in methods.METHODS:
        raise InvalidArgumentError(
            f"`recompute=True`: a {manifest.method!r} selection depends on a training run and cannot be re-run "
            "here; load it without recompute (the recorded rows are checked against their digest)."
        )
    if manifest.decontamination is not None and overrides.get("exclude_dataset") is None:
        raise InvalidArgumentError(
            f"{manifest.origin} dropped {manifest.decontamination['removed']} pool rows matching an evaluation set "
            f"({manifest.decontamination['exclude'].get('name') or 'unnamed'}, "
            f"{manifest.decontamination['exclude'].get('num_rows')} rows) before clustering: pass that set again as "
            "`exclude_dataset=` to re-run it, or load without `recompute`."
        )
    _check_target(manifest, overrides.get("target_dataset"))
    recorded = _current_names(manifest)
    _check_recorded_encoder(manifest, recorded)
    if recorded.get("k") == "auto" and manifest.k_selection.get("mode") == "auto" and "rule" not in manifest.k_selection:
        recorded["k"] = "auto-global"  # written before k="auto" followed the paper's range: the search it ran
    for name in ("method", "seed"):
        if name in recorded and recorded[name] != getattr(manifest, name):
            raise InvalidArgumentError(
                f"{manifest.origin} records `arguments.{name}`={checks.short(recorded[name])} but "
                f"`{name}`={checks.short(getattr(manifest, name))}: "
                "the file was edited. Load it without `recompute` (the recorded rows are checked against their digests)."
            )
    if recorded.pop("trust_remote_code", False) is not False and "trust_remote_code" not in overrides:
        logger.warning(
            "%s asks for trust_remote_code; ignored: hf_idsel never takes trust_remote_code from a manifest. "
            "Pass trust_remote_code=True to load_selection yourself if you trust the encoder's code.",
            manifest.origin,
        )
    encoder = recorded.pop("encoder", DEFAULT_ENCODER)
    encoder_revision = recorded.pop("encoder_revision", None)
    if "encoder" in overrides:
        same = isinstance(overrides["encoder"], str) and overrides["encoder"] == encoder
        if same and "encoder_revision" not in overrides:
            recorded["encoder_revision"] = encoder_revision
        if same and encoder.startswith(hidden_states.PREFIX) and (manifest.encoder or {}).get("id") == encoder:
            # The string names the model; the layer, pooling and projection the run used are in the manifest.
            _check_hidden_states_record(manifest)
            overrides = {**overrides, "encoder": hidden_states.from_manifest_record(
                manifest.encoder, revision=overrides.get("encoder_revision", encoder_revision),
                device=overrides.get("device"), trust_remote_code=bool(overrides.get("trust_remote_code", False)),
            )}
    elif recorded.get("embedding_column") is None and (encoder != DEFAULT_ENCODER or encoder_revision is not None):
        at = f" at revision {encoder_revision!r}" if encoder_revision is not None else ""
        raise InvalidArgumentError(
            f"`recompute=True` would load the encoder {encoder!r}{at} that {manifest.origin} names, and "
            "load_selection loads no encoder a manifest chooses without your consent. If you trust it, pass it "
            f"yourself: `load_selection(..., recompute=True, encoder={encoder!r}"
            f"{f', encoder_revision={encoder_revision!r}' if encoder_revision is not None else ''})`. Or load "
            "without `recompute` (the recorded rows are checked against their digests)."
        )
    replay = {**recorded, **overrides}
    _check_replay(manifest, replay, recorded=set(recorded) - set(overrides))
    return replay


# The bounds of a hidden-state encoder's settings that a manifest's `encoder` entry replays (its model is the
# caller's): a context of 128k tokens, a projection to 64k dimensions, a model of 4096 layers.
_HIDDEN_STATES_BOUNDS = {"layer": (-1, 4_096), "max_length": (8, 2**17), "dim": (1, 2**16), "projection_seed": (0, checks.MAX_INT32)}
_SELECT_FIELDS = {f.name for f in fields(SelectArguments)}


def _check_replay(manifest: Manifest, replay: dict, *, recorded: set) -> None:
    """Every replayed setting checked and bounded before any work (no pool read, no encoder loaded): the checks of a
    call ([`check_values`], with the bounds of arguments.py and render.py), and what depends only on the pool's size,
    which the manifest records (`check_pool` then holds the pool to it): the budget and k fit `pool.num_rows`, and
    an int `k` is the manifest's `k`. An error names the manifest's field (`arguments.template`)."""
    def refuse(name: str, message: str):
        field = f"`arguments.{name}` of {manifest.origin}" if name in recorded else f"`{name}`"
        raise InvalidArgumentError(
            f"load_selection(..., recompute=True): {field}: {message} Load it without `recompute` (the recorded rows "
            "are checked against their digests), or re-run diverse_select yourself with arguments you chose."
        )

    try:
        check_values(SelectArguments(**{name: value for name, value in replay.items() if name in _SELECT_FIELDS}))
    except InvalidArgumentError as err:
        named = re.findall(r"`(\w+)`", str(err))
        refuse(named[0] if named else "arguments", str(err))
    rows = manifest.pool["num_rows"]
    budget = replay.get("budget")
    if isinstance(budget, numbers.Integral) and not isinstance(budget, bool) and budget > rows:
        refuse("budget", f"{checks.short(budget)} rows is more than the pool has ({rows} rows).")
    if budget is not None:
        try:
            resolve_budget(replay["budget"], rows)
        except InvalidArgumentError as err:
            refuse("budget", f"{err} (the pool of {manifest.origin} has {rows} rows)")
    if "k" not in recorded:
        return
    k = replay["k"]
    if not isinstance(k, str) and k != manifest.k:
        refuse("k", f"{checks.short(k)} is not the manifest's `k`={manifest.k}: the file was edited.")
    if isinstance(k, str) and manifest.k_selection.get("mode") != "auto":
        refuse("k", f"{checks.short(k)} chooses k, but the manifest records a fixed `k`={manifest.k}: the file was edited.")


def _check_recorded_encoder(manifest: Manifest, recorded: dict) -> None:
    """The encoder a manifest names (loaded only with the caller's consent) is a model id or path of bounded length:
    its name is quoted in the consent error, and compared with the caller's."""
    for name in ("encoder", "encoder_revision"):
        if name not in recorded or (name == "encoder_revision" and recorded[name] is None):
            continue
        value = recorded[name]
        if not isinstance(value, str) or not value or len(value) > MAX_NAME_LENGTH:
            raise InvalidArgumentError(
                f"load_selection(..., recompute=True): `arguments.{name}`={checks.short(value)} of {manifest.origin} is "
                f"not a model id, path or revision (a non-empty string of at most {MAX_NAME_LENGTH} characters): the "
                "file was edited. Load it without `recompute` (the recorded rows are checked against their digests)."
            )


def _check_hidden_states_record(manifest: Manifest) -> None:
    """The layer, max_length, projection size and seed that a manifest's hidden-state `encoder` entry sets, bounded."""
    for name, (low, high) in _HIDDEN_STATES_BOUNDS.items():
        value = manifest.encoder.get(name)
        if value is None:
            continue
        try:
            checks.check_int(value, f"encoder.{name}", minimum=low, maximum=high)
        except InvalidArgumentError as err:
            raise InvalidArgumentError(
                f"load_selection(..., recompute=True): {manifest.origin}: {err} The file was edited; load it without "
                "`recompute` (the recorded rows are checked against their digests)."
            ) from None


def _check_target(manifest: Manifest, target) -> None:
    """A re-run of a targeted selection needs the very target it was aimed at (checked against the recorded digest,
    before anything is embedded); one that was not aimed at a target takes none."""
    record = manifest.target
    if record is None:
        if target is not None:
            raise InvalidArgumentError(
                f"{manifest.origin} was not aimed at a target: drop `target_dataset` to re-run it as it was made."
            )
        return
    what = f"({record.get('name') or 'unnamed'}, {record['num_rows']} rows, target_method={record['method']!r})"
    if target is None:
        raise InvalidArgumentError(
            f"{manifest.origin} was aimed at a target {what}: pass those examples again as `target_dataset=` to re-run "
            "it, or load without `recompute` (the recorded rows are checked against their digests)."
        )
    if target_digest(as_target_dataset(target)) != record["digest"]:
        raise SelectionMismatchError(
            f"The `target_dataset` passed differs from the target {what} that {manifest.origin} was aimed at (content "
            "digest): pass the same examples, unchanged and in the same order."
        )


def _current_names(manifest: Manifest) -> dict:
    """The manifest's `arguments` under their current names: a manifest written before a rename (`temperature`,
    `include_answer`) replays as it was made."""
    unknown = sorted(name for name in manifest.arguments if OLD_NAMES.get(name, name) not in RECORDED_ARGUMENTS)
    if unknown:
        raise InvalidArgumentError(
            f"{manifest.origin} records {unknown} among its `arguments`, which diverse_select does not record: the "
            "file was edited or not written by diverse_select. Load it without `recompute`."
        )
    recorded = {}
    for name, value in manifest.arguments.items():
        current = OLD_NAMES.get(name, name)
        if current in recorded and recorded[current] != value:
            old = name if name != current else next(o for o, new in OLD_NAMES.items() if new == current and o in manifest.arguments)
            raise InvalidArgumentError(
                f"{manifest.origin} records both `{current}` and its old name `{old}` among its `arguments`, with "
                "different values: the file was edited. Load it without `recompute`."
            )
        recorded[current] = value
    return recorded


def _recompute(manifest: Manifest, pool: datasets.Dataset, arguments: dict) -> datasets.Dataset:
    try:
        subset, again = diverse_select(pool, return_manifest=True, **arguments)
    except InvalidArgumentError as err:
        raise InvalidArgumentError(f"Re-running the selection of {manifest.origin} (recompute=True): {err}") from err
    if again.selected_digest != manifest.selected_digest or again.selected_clusters != manifest.selected_clusters:
        what = "rows" if again.selected_digest != manifest.selected_digest else "cluster ids"
        raise SelectionMismatchError(
            f"Re-running the selection gave different {what} than {manifest.origin} records "
            f"({again.selected_digest[:19]}... vs {manifest.selected_digest[:19]}...). Library versions then: "
            f"{manifest.versions}; now: {again.versions}."
        )
    return subset


def _read_manifest(source, *, config, revision, token) -> Manifest:
    if not isinstance(source, str) or source.lstrip().startswith("{") or _is_local_path(source):
        for name, value in (("config", config), ("revision", revision)):
            if value is not None:
                raise InvalidArgumentError(
                    f"`{name}` only applies to a Hub repo id; for a local manifest pass its path and leave `{name}` out."
                )
        if isinstance(source, str) and not source.lstrip().startswith("{") and not os.path.exists(source):
            folder = source.split("/")[0]
            why = f" (read as a local path: the folder {folder!r} exists here)" if os.path.isdir(folder) else ""
            raise InvalidArgumentError(
                f"`manifest`={source!r}: no such local file or folder{why}. Check the path: pass a manifest.json, a "
                "folder holding one, or the id 'namespace/name' of a Hub dataset repo."
            )
        return Manifest.load(source)
    from huggingface_hub import hf_hub_download  # looked up at call time: tests replace it

    if config is not None and not isinstance(config, str):
        raise InvalidArgumentError(f"`config`={config!r} must be a config name such as 'round_2'.")
    filename = manifest_path(config or DEFAULT_CONFIG)
    try:
        path = hf_hub_download(source, filename, repo_type="dataset", revision=revision, token=token)
    except Exception as err:
        raise InvalidArgumentError(
            f"`manifest`={source!r} is no local file or folder, and reading {filename} from the dataset repo "
            f"{source!r}{f' (config {config!r})' if config else ''} failed: "
            f"{error_summary(err, token)}. "
            "Check the path, or the repo id, the config name (round_1, round_2, ... or the default) and your token."
        ) from None
    return Manifest.load(path, origin=f"{filename} of the dataset repo {source!r}")


def _is_local_path(source: str) -> bool:
    """Whether `source` names a local manifest (existing or not) rather than a Hub repo id `namespace/name`."""
    if os.path.exists(source):
        return True
    try:
        check_repo_id(source)
    except InvalidArgumentError:
        return True  # not `namespace/name`: `./x`, `/x`, `~/x`, `a/b/c`, `manifest.jsn`
    # `selection/manifst.json`, `selection/run2`: a mistyped file or folder under a local folder.
    return source.lower().endswith(".json") or os.path.isdir(source.split("/")[0])


def load_recorded_pool(manifest, *, token=None) -> datasets.Dataset:
    """The pool a manifest's selection was made on, built again from the reference it records and checked against its
    digests: the built-in pool from its recipe (rows per source, seed, a sample's size and seed), a Hub dataset at its
    config, split and revision, a local file at its path.

    `hf-idsel eval` reads a run's pool this way, to hold out exactly the rows the model could have trained on.

    Args:
        manifest (`Manifest`, `dict` or `str`):
            The manifest, or the path of its file (or of a folder holding `manifest.json`).
        token (`str`, *optional*):
            Hub token, for a private or gated Hub pool.

    Raises:
        [`InvalidArgumentError`]: the manifest names no pool that can be built here (a local file that is not on this
            machine: the message names the file and its content digest); [`SelectionMismatchError`]: the pool built
            differs from the one recorded.
    """
    manifest = Manifest.load(manifest)
    pool = _load_recorded_pool(manifest, token)
    _check_rebuilt_pool(manifest, pool)
    return pool


def _check_rebuilt_pool(manifest: Manifest, pool: datasets.Dataset) -> None:
    """`manifest.check_pool` of a pool built from the manifest's reference; a mismatch says what the reference lacked."""
    try:
        manifest.check_pool(pool)
    except SelectionMismatchError as err:
        reference = pool_reference(manifest)
        if reference.kind == "builtin" and (reference.seed is None or reference.rows_per_source is None):
            raise SelectionMismatchError(
                f"{err} {manifest.origin} was written before hf_idsel recorded the built-in pool's recipe, so it was "
                "built again with seed 0 and the default rows per source: build it as it was made (e.g. "
                "`load_builtin_pool(seed=<the training seed>)`, then `sample_pool(pool, <max_pool_rows>, "
                "seed=<the training seed>)`) and pass it as `pool=`."
            ) from None
        raise


def _load_recorded_pool(manifest: Manifest, token) -> datasets.Dataset:
    source = dict(manifest.pool.get("source") or {})
    path = source.get("path")
    if path is None and manifest.pool.get("name") == BUILTIN_POOL_NAME:
        source["path"] = path = BUILTIN_POOL  # written before manifests recorded the built-in pool's recipe
    local = source.get("file") or (is_local_path(path) and not os.path.exists(path) and path)
    if local:
        sample = ""
        if source.get("sample_rows"):
            sample = f", then `sample_pool(pool, {source['sample_rows']}, seed={source.get('sample_seed', '0')})`"
        raise InvalidArgumentError(
            f"{manifest.origin} was made on the local file {os.path.basename(local)!r} (content digest "
            f"{manifest.pool['digest']}), which is not on this machine{f' at {path!r}' if path else ''}: pass `pool=` "
            f"(`hf_idsel.pool.load_pool('path/to/{os.path.basename(local)}')`{sample}); its rows are checked against "
            "that digest."
        )
    if path is None:
        raise InvalidArgumentError(
            f"{manifest.origin} does not say where its pool lives: pass `pool=` (the dataset the selection was made on)."
        )
    try:
        return load_pool_source(source, token=token, argument="the manifest's pool")
    except IdselError:
        raise
    except Exception as err:
        raise InvalidArgumentError(
            f"Could not load the pool {path!r} that {manifest.origin} names: {error_summary(err, token)}. "
            "Pass `pool=` (the dataset the selection was made on)."
        ) from err
