"""Hub: publish a `diverse_select` result or finish the push of a staged folder, with hf_idsel's cards.

[`publish`] stages and pushes files without knowing what a card says, and [`cards`] renders cards
without knowing how they travel; neither imports the other. This module joins them: it renders the
card [`push_selection`] stages, and hands the push engine hf_idsel's card writers ([`CARD_WRITERS`]),
which write the cards again once a push knows the repos it reaches.
"""

from __future__ import annotations

import logging
import os
import re

import datasets

from .cards import card_facts, dataset_card, refresh_model_card, restage_dataset_card
from .errors import InvalidArgumentError
from .hub_layout import DEFAULT_CONFIG, check_repo_id
from .manifest import Manifest, indices_digest
from .publish import CardWriters, push_staged, stage

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

    Raises:
        [`PushError`]: the push stopped; says what was pushed, what was not and how to finish.
    """
    return push_staged(
        folder, repo_id, private=private, token=token, include_model=include_model, max_retries=max_retries,
        backoff=backoff, cards=CARD_WRITERS,
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

    Returns:
        `str`: the dataset repo's URL.

    Raises:
        [`PushError`]: the push stopped; says what was pushed, what was not and how to finish.
    """
    check_repo_id(repo_id)
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
    pool_id = pool_id or (manifest.pool.get("source") or {}).get("path")
    folder = local_dir or os.path.join("hf_idsel_push", repo_id.replace("/", "--"))
    card = dataset_card(manifest, card_facts(repo_id, pool_id, token), configs=[config_name])
    stage(folder, repo_id, subsets={config_name: subset}, manifests={config_name: manifest}, card=card, private=private, plot_manifest=manifest)
    logger.info("Staged the push of %d rows to %s in %s", len(subset), repo_id, folder)
    return push_folder(folder, private=private, token=token, max_retries=max_retries, backoff=backoff)
