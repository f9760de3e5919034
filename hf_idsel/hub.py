"""Hub: publish a `diverse_select` result or finish the push of a staged folder, with hf_idsel's cards.

[`publish`] stages and pushes files without knowing what a card says, and [`cards`] renders cards
without knowing how they travel; neither imports the other. This module joins them: it renders the
card [`push_selection`] stages, and hands the push engine hf_idsel's card writers ([`CARD_WRITERS`]),
which write the cards again once a push knows the repos it reaches.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re

import datasets

from .cards import dataset_card, refresh_model_card, restage_dataset_card
from .errors import InvalidArgumentError, PushError, error_summary
from .hub_client import HubTimeouts, hub_timeouts
from .hub_layout import DEFAULT_CONFIG, MANIFEST_FILE, MANIFESTS_DIR, check_repo_id, read_plan
from .manifest import Manifest, indices_digest
from .provenance import card_facts, pool_reference
from .publish import CardWriters, network_failure, push_staged, stage

logger = logging.getLogger(__name__)

CARD_WRITERS = CardWriters(dataset=restage_dataset_card, model=refresh_model_card)
"""hf_idsel's dataset card (from the staged manifest, round files and plan) and model card (from the facts the
trainer saved beside the model), written again for the repos a push reaches."""


def push_folder(
    folder: str,
    repo_id: str | None = None,
    *,
    private: bool | None = None,
    token=None,
    include_model: bool = True,
    max_retries: int = 4,
    backoff: float = 1.0,
    license: str | None = None,
    timeout=None,
) -> str:
    """Push what is staged in `folder` and not pushed yet ([`publish.push_staged`]), with hf_idsel's cards written
    again for the repos the push reaches; returns the dataset repo's URL.

    Args:
        folder (`str`):
            A folder staged for a push: by [`push_selection`], by the trainer (`output_dir/_hf_idsel_selection`),
            or a push that stopped.
        repo_id (`str`, *optional*):
            Push somewhere else than the staged repo id.
        private (`bool`, *optional*):
            Create the repo private (no effect on an existing repo).
        token (`str` or `bool`, *optional*):
            Hub token; default: the logged-in one.
        include_model (`bool`, *optional*, defaults to `True`):
            Also upload the trained model the plan names (trainer output directories).
        max_retries (`int`, *optional*, defaults to `4`):
            Retries of a step that failed with a network error, 408/429 or a 5xx answer.
        backoff (`float`, *optional*, defaults to `1.0`):
            First wait in seconds; doubles at each retry.
        license (`str`, *optional*):
            The selection's licence (a Hub licence id such as `"cc-by-4.0"`): the dataset card carries it in place
            of the pool's.
        timeout (`float` or `tuple[float, float]`, *optional*):
            Seconds each request waits for a connection and for each read, or `(connect, read)`; default: the
            environment's `HF_IDSEL_HUB_CONNECT_TIMEOUT` / `HF_IDSEL_HUB_READ_TIMEOUT`, else 10 / 60.

    Raises:
        [`InvalidArgumentError`]: a staged data file was edited since it was staged (named, with the fix).
        [`PushError`]: the push stopped; says what was pushed, what was not and how to finish.
    """
    HubTimeouts.resolve(timeout)  # a bad value before anything is read or sent
    check_license(license)
    _warn_if_local_pool(folder)
    return push_staged(
        folder, repo_id, private=private, token=token, include_model=include_model, max_retries=max_retries,
        backoff=backoff, cards=CARD_WRITERS, license=license, timeout=timeout,
    )


def check_license(license, argument: str = "license") -> None:
    """Refuse a licence that is not a Hub licence id (lower-case, such as `mit` or `cc-by-4.0`), naming `argument`."""
    if license is not None and (not isinstance(license, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", license)):
        raise InvalidArgumentError(
            f"`{argument}`={license!r} is not a Hub licence id: use one such as 'mit', 'apache-2.0', 'cc-by-4.0' or 'other' "
            "(lower case; https://huggingface.co/docs/hub/repositories-licenses)."
        )


def _warn_if_local_pool(folder: str) -> None:
    """Say once, before the push, that a selection of a local file cannot be rebuilt elsewhere."""
    configs = read_plan(folder)["configs"]
    paths = [os.path.join(folder, MANIFEST_FILE)] + [os.path.join(folder, MANIFESTS_DIR, f"{c}.json") for c in configs]
    found = next((p for p in paths if os.path.isfile(p)), None)
    if found is None:
        return
    reference = pool_reference(Manifest.load(found))
    if reference.kind == "local":
        logger.warning(
            "The pool is the local file %s: the pushed card and manifests name it and its content digest (%s), not its "
            "path, so the selection cannot be rebuilt elsewhere without that file.", reference.name, reference.digest,
        )


def push_selection(
    subset: datasets.Dataset,
    repo_id: str,
    *,
    manifest=None,
    pool_id: str | None = None,
    config_name: str = DEFAULT_CONFIG,
    local_dir: str | None = None,
    private: bool | None = None,
    token=None,
    max_retries: int = 4,
    backoff: float = 1.0,
    license: str | None = None,
    timeout=None,
) -> str:
    """Push a `diverse_select` result to a Hub dataset repo: rows, `manifest.json`, a card and a plot.

    Args:
        subset (`datasets.Dataset`):
            The result of `diverse_select` (with `source_index` and `cluster`).
        repo_id (`str`):
            Dataset repo, `"namespace/name"`; created if needed.
        manifest (`Manifest`, `dict` or `str`):
            The selection's manifest (required): from `diverse_select(..., return_manifest=True)`, or a saved
            `manifest.json` (its path, folder or contents).
        pool_id (`str`, *optional*):
            Hub id of the pool, for the card's `source_datasets`, its license and language, and so
            that `load_selection(repo_id)` can load the pool by itself.
        config_name (`str`, *optional*, defaults to `"default"`):
            Config the rows go to.
        local_dir (`str`, *optional*):
            Where everything is staged before the upload; default: `hf_idsel_push/<namespace>--<name>`
            in the working directory.
        private (`bool`, *optional*):
            Create the repo private.
        token (`str`, *optional*):
            Hub token; default: the logged-in one.
        max_retries (`int`, *optional*, defaults to `4`):
            Retries of a step after a network error, 408/429 or a 5xx answer.
        backoff (`float`, *optional*, defaults to `1.0`):
            First wait in seconds before a retry; doubles at each retry.
        license (`str`, *optional*):
            The selection's licence (a Hub licence id): the card carries it in place of the pool's (the built-in
            pool's sources and a Hub pool's card give one; a local file's is unknown).
        timeout (`float` or `tuple[float, float]`, *optional*):
            Seconds each request waits for a connection and for each read, or `(connect, read)`; default: the
            environment's `HF_IDSEL_HUB_CONNECT_TIMEOUT` / `HF_IDSEL_HUB_READ_TIMEOUT`, else 10 / 60. A request
            that times out is retried like a network error.

    Returns:
        `str`: the dataset repo's URL.

    Raises:
        [`PushError`]: the push stopped; says what was pushed, what was not and how to finish.
    """
    check_repo_id(repo_id)
    HubTimeouts.resolve(timeout)
    check_license(license)
    if not isinstance(subset, datasets.Dataset):
        raise InvalidArgumentError(f"`subset` must be a datasets.Dataset from diverse_select, got {type(subset).__name__}.")
    missing = [c for c in ("source_index", "cluster") if c not in subset.column_names]
    if missing:
        raise InvalidArgumentError(f"`subset` lacks {missing}: push the result of `diverse_select`, unchanged.")
    if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", config_name or ""):
        raise InvalidArgumentError(f"`config_name`={config_name!r}: use letters, digits, '_', '-' or '.'.")
    if manifest is None:
        raise InvalidArgumentError(
            "`manifest` is required (the card, `manifest.json` and `load_selection` read it): call "
            "`subset, manifest = diverse_select(..., return_manifest=True)` and pass `manifest=manifest`, or pass the "
            "path of the selection's saved manifest.json (`load_selection(path, pool)` rebuilds its subset)."
        )
    manifest = Manifest.load(manifest)
    manifest.check_integrity()
    if indices_digest(subset["source_index"]) != manifest.selected_digest:
        raise InvalidArgumentError(
            "`subset`'s `source_index` rows differ from the ones `manifest` records: pass the manifest of this subset."
        )
    if pool_id is not None:
        if not isinstance(pool_id, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$", pool_id):
            raise InvalidArgumentError(f"`pool_id`={pool_id!r} is not a Hub dataset id (or 'builtin').")
        manifest.pool["source"] = {**(manifest.pool.get("source") or {}), "path": pool_id}
    folder = local_dir or os.path.join("hf_idsel_push", repo_id.replace("/", "--"))
    facts = card_facts(repo_id, pool_reference(manifest), token, folder=folder, license=license, timeout=timeout)
    card = dataset_card(manifest, facts, configs=[config_name])
    stage(
        folder, repo_id, subsets={config_name: subset}, manifests={config_name: manifest}, card=card, private=private,
        plot_manifest=manifest, license=license,
    )
    logger.info("Staged the push of %d rows to %s in %s", len(subset), repo_id, folder)
    return push_folder(folder, private=private, token=token, max_retries=max_retries, backoff=backoff, timeout=timeout)


@contextlib.contextmanager
def model_repo_creation(enabled: bool = True, token=None, timeout=None):
    """The Hub requests of `Trainer.__init__` (with `push_to_hub=True` it creates the model repo) under Hub timeouts:
    a Hub that does not answer stops the constructor with [`PushError`] instead of holding it forever.

    Args:
        enabled (`bool`, *optional*, defaults to `True`):
            Whether the block pushes at all (`args.push_to_hub`); without it the block runs as it is.
        token (`str`, *optional*):
            The Hub token, kept out of the error.
        timeout (`float` or `tuple[float, float]`, *optional*):
            See [`hub_client.HubTimeouts.resolve`].

    Raises:
        [`PushError`]: creating the model repo failed on the network (a timeout, a refused or dropped connection).
    """
    if not enabled:
        yield
        return
    with hub_timeouts(timeout):
        try:
            yield
        except Exception as err:
            if not (network_failure(err) and _request_url(err).endswith("/api/repos/create")):
                raise
            raise PushError(
                f"push_to_hub=True: creating the model repo on the Hub failed ({type(err).__name__}: "
                f"{error_summary(err, token)}) before training started; nothing was pushed. The Hub did not answer in "
                "time or could not be reached: check the connection (HF_ENDPOINT), try again later, or train with "
                "push_to_hub=False and publish afterwards with `hf-idsel push OUTPUT_DIR`.",
                not_pushed=["model repo"],
            ) from None


def _request_url(err) -> str:
    try:  # httpx's `request` property raises when the error carries none
        return str(err.request.url)
    except Exception:
        return ""
