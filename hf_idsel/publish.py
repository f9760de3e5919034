"""Publish: push selected rows, manifests, a dataset card and a plot to the Hub, nothing lost on failure.

Every push is staged first: the rows (one parquet file per config), the manifests, the plot, the
round files and the card are written to a local folder together with `hf_idsel_push.json`, which
lists the push steps and the ones already done. Steps then run in order (repository, each config
through `datasets`' own `push_to_hub`, the other files, the card last so that the `configs`
metadata `datasets` wrote is kept). A step that fails with a network or server error is retried with
back-off; a failure that retrying cannot fix stops at once. Either way [`PushError`] says what was
pushed, what was not, and the command that finishes the push from the staged folder
(`hf-idsel push FOLDER`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time

import datasets

from .errors import InvalidArgumentError, PushError
from .hub_layout import DEFAULT_CONFIG, ITERATIVE_METHOD, PUSH_FILE, ROUND_COLUMN, STAGING_DIR, manifest_path
from .manifest import Manifest, indices_digest, selection_subset
from .report import plot_cluster_map, plot_selection
from .rounds import write_round_file

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{8,}")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_repo_id(repo_id, argument: str = "repo_id") -> str:
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or len(repo_id) > 96 or "--" in repo_id or ".." in repo_id:
        raise InvalidArgumentError(
            f"`{argument}`={repo_id!r} is not a Hub repo id: use 'namespace/name' (letters, digits, '-', '_', '.')."
        )
    return repo_id


# ---- staging ----


def stage(
    folder: str,
    repo_id: str,
    *,
    subsets: dict[str, datasets.Dataset],
    manifests: dict[str, Manifest],
    card,
    rounds: list[dict] | None = None,
    private: bool | None = None,
    plot_manifest: Manifest | None = None,
) -> str:
    """Write everything a push needs under `folder`, and the push plan `hf_idsel_push.json`.

    Configs already staged and pushed stay recorded: staging `round_2` after `round_1` was pushed
    only adds the new steps.
    """
    os.makedirs(os.path.join(folder, "data"), exist_ok=True)
    plan = read_plan(folder) if os.path.isfile(os.path.join(folder, PUSH_FILE)) else None
    if plan is not None and plan["repo_id"] != repo_id:
        raise InvalidArgumentError(
            f"{folder} already stages a push to {plan['repo_id']!r}, not {repo_id!r}: use another local folder."
        )
    plan = plan or {"repo_id": repo_id, "repo_type": "dataset", "private": private, "configs": [], "done": []}
    for name, subset in subsets.items():
        subset.to_parquet(os.path.join(folder, "data", f"{name}.parquet"))
        if name not in plan["configs"]:
            plan["configs"].append(name)
        _undo(plan, f"config:{name}")
    for name, manifest in manifests.items():
        manifest.save(os.path.join(folder, manifest_path(name)))
    if rounds:
        for r in rounds:
            write_round_file(os.path.join(folder, "selection"), r)
    if plot_manifest is not None:
        plot_selection(plot_manifest, os.path.join(folder, "selection.png"), rounds)
        if plot_manifest.cluster_map:
            plot_cluster_map(plot_manifest, os.path.join(folder, "cluster_map.png"))
    if card is not None:
        card.save(os.path.join(folder, "README.md"))
        _undo(plan, "card")
    _undo(plan, "files")
    _write_plan(folder, plan)
    return folder


def iterative_subset(pool: datasets.Dataset, manifest: Manifest, rounds: list[dict]) -> datasets.Dataset:
    """The rows of an iterative run's manifest, each with the round that drew it (`ROUND_COLUMN`)."""
    round_of = {row: r["round"] for r in rounds for row in r["selected"]}
    drawn_in = [round_of[row] for row in manifest.selected_indices]
    return selection_subset(pool, manifest.selected_indices, manifest.selected_clusters, **{ROUND_COLUMN: drawn_in})


def _undo(plan: dict, step: str) -> None:
    if step in plan["done"]:
        plan["done"].remove(step)


def read_plan(folder: str) -> dict:
    path = os.path.join(folder, PUSH_FILE)
    if not os.path.isfile(path):
        raise InvalidArgumentError(f"{folder} holds no {PUSH_FILE}: it is not a folder staged by hf_idsel for a push.")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_plan(folder: str, plan: dict) -> None:
    tmp = os.path.join(folder, PUSH_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(plan, f, indent=2)
    os.replace(tmp, os.path.join(folder, PUSH_FILE))


def plan_steps(plan: dict, include_model: bool = True) -> list[str]:
    # Default config last among the data: datasets then marks it as the default without a later rewrite.
    configs = sorted(plan["configs"], key=lambda c: (c == DEFAULT_CONFIG, _config_order(c)))
    steps = ["repo"] + [f"config:{c}" for c in configs] + ["files", "card"]
    if include_model and plan.get("model"):
        steps.append("model")
    return steps


def _config_order(name: str):
    match = re.match(r"round_(\d+)$", name)
    return (0, int(match.group(1)), name) if match else (1, 0, name)


# ---- pushing ----


def push_staged(
    folder: str,
    repo_id: str | None = None,
    *,
    private: bool | None = None,
    token=None,
    include_model: bool = True,
    max_retries: int = 4,
    backoff: float = 1.0,
) -> str:
    """Run the steps of a staged push that are not done yet; returns the dataset repo's URL.

    Args:
        folder (`str`):
            A folder written by [`stage`] (or by `push_selection` / the trainer).
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
    """
    from huggingface_hub import HfApi

    plan = read_plan(folder)
    if repo_id is not None and repo_id != plan["repo_id"]:
        check_repo_id(repo_id)
        plan.update(repo_id=repo_id, done=[])
        _restage_card(folder, repo_id, token)
    if private is not None:
        plan["private"] = private
    api = HfApi(token=token)
    steps = plan_steps(plan, include_model)
    for step in steps:
        if step in plan["done"]:
            continue
        _run_with_retries(lambda: _run_step(api, folder, plan, step, token), step, plan, steps, folder, token, max_retries, backoff)
        plan["done"].append(step)
        _write_plan(folder, plan)
        logger.info("Pushed %s to %s", step, plan["repo_id"])
    return f"{api.endpoint}/datasets/{plan['repo_id']}"


def set_model_push(folder: str, repo_id: str, model_folder: str, *, commit_message: str | None = None, revision: str | None = None) -> None:
    """Add the upload of a trained model (`model_folder`, e.g. the trainer's output_dir) to a staged push."""
    plan = read_plan(folder)
    model = {
        "repo_id": repo_id,
        "folder": os.path.relpath(model_folder, folder),
        "commit_message": commit_message,
        "revision": revision,
    }
    plan["model"] = model
    _undo(plan, "model")  # new weights every time
    _write_plan(folder, plan)


def queue_model_upload(folder: str) -> None:
    """Mark the model upload of a staged push as not done, so that `hf-idsel push` sends the model folder again
    (after its card changed)."""
    plan = read_plan(folder)
    _undo(plan, "model")
    _write_plan(folder, plan)


def _run_step(api, folder: str, plan: dict, step: str, token) -> None:
    repo_id = plan["repo_id"]
    if step == "repo":
        url = api.create_repo(repo_id, repo_type="dataset", private=plan.get("private"), exist_ok=True)
        if url.repo_id != repo_id:  # a bare name: the Hub put the repo under the token's namespace
            plan["repo_id"] = url.repo_id
            _restage_card(folder, url.repo_id, token)
    elif step.startswith("config:"):
        name = step.split(":", 1)[1]
        rows = datasets.Dataset.from_parquet(os.path.join(folder, "data", f"{name}.parquet"))
        rows.push_to_hub(
            repo_id,
            config_name=name,
            split="train",
            token=token,
            private=plan.get("private"),
            commit_message=f"hf_idsel: rows of config {name}",
        )
    elif step == "files":
        patterns = ["manifest.json", "manifests/*.json", "selection/*.json", "selection.png", "cluster_map.png"]
        api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=folder,
            allow_patterns=patterns,
            commit_message="hf_idsel: manifests, round files and plot",
        )
    elif step == "card":
        _push_card(api, folder, repo_id, token)
    elif step == "model":
        from .cards import refresh_model_card  # cards imports this module's Hub layout constants

        model = plan["model"]
        model["repo_id"] = api.create_repo(model["repo_id"], private=plan.get("private"), exist_ok=True).repo_id
        model_folder = os.path.normpath(os.path.join(folder, model["folder"]))
        refresh_model_card(model_folder, model["repo_id"], dataset_id=repo_id)  # the card names the repos pushed to
        api.upload_folder(
            repo_id=model["repo_id"],
            folder_path=model_folder,
            commit_message=model.get("commit_message") or "End of training",
            revision=model.get("revision"),
            # What Trainer.push_to_hub leaves out: checkpoints (pushed by hub_strategy) and staging folders.
            ignore_patterns=["_*", "checkpoint-*"],
        )
    else:
        raise InvalidArgumentError(f"Unknown push step {step!r} in {os.path.join(folder, PUSH_FILE)}.")


def _restage_card(folder: str, repo_id: str, token) -> None:
    from .cards import restage_dataset_card  # cards imports this module's Hub layout constants

    restage_dataset_card(folder, repo_id, token)


def _push_card(api, folder: str, repo_id: str, token) -> None:
    """Our card with the `configs`/`dataset_info` metadata `datasets` wrote to the repo's card."""
    from huggingface_hub import DatasetCard

    path = os.path.join(folder, "README.md")
    if not os.path.isfile(path):
        return
    ours = DatasetCard.load(path)
    try:
        remote = DatasetCard.load(repo_id, token=token)
        for key in ("configs", "dataset_info"):
            if remote.data.get(key) is not None:
                ours.data[key] = remote.data.get(key)
    except Exception as err:
        if _status(err) not in (None, 404):
            raise
    ours.push_to_hub(repo_id, token=token, commit_message="hf_idsel: dataset card")


def _status(err) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _retryable(err, step: str) -> bool:
    status = _status(err)
    if status is not None:
        # 409/412: another commit landed first; a fresh attempt commits on top of it.
        return status in RETRY_STATUS or (status in (409, 412) and step != "repo")
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    # huggingface_hub speaks httpx (or httpx2): their network errors all derive from TransportError.
    return any(
        cls.__name__ in ("TransportError", "NetworkError", "TimeoutException", "RemoteProtocolError")
        and cls.__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests", "urllib3")
        for cls in type(err).__mro__
    ) or _is_connection_error(err)


def _is_connection_error(err) -> bool:
    try:
        import requests
    except ImportError:
        return False
    return isinstance(err, (requests.ConnectionError, requests.Timeout))


def redact(text: str, token=None) -> str:
    """`text` without any Hub token in it."""
    if isinstance(token, str) and token:
        text = text.replace(token, "***")
    return _TOKEN_PATTERN.sub("hf_***", text)


def _run_with_retries(fn, step, plan, steps, folder, token, max_retries, backoff):
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as err:
            if isinstance(err, InvalidArgumentError) or not (_retryable(err, step) and attempt < max_retries):
                raise _push_error(err, step, plan, steps, folder, token, attempt) from None
            wait = backoff * (2**attempt)
            attempt += 1
            logger.warning(
                "Pushing %s to %s failed (%s); retry %d/%d in %.1fs.",
                step, plan["repo_id"], redact(_short(err), token), attempt, max_retries, wait,
            )
            time.sleep(wait)


def _short(err) -> str:
    status = _status(err)
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}{f' {status}' if status else ''}: {first[:300]}"


def _push_error(err, step, plan, steps, folder, token, retries) -> PushError:
    status = _status(err)
    done = [s for s in steps if s in plan["done"]]
    left = [s for s in steps if s not in plan["done"]]
    hint = {
        401: "The Hub refused the token: log in with `hf auth login` or set HF_TOKEN to a token with write access.",
        403: "The token may not write to this repo or namespace: check its permissions and the namespace.",
        409: "The Hub reported a conflict (the repo exists as another type, or changed during the push).",
        404: "The repo or revision was not found: check the repo id and that the token can see it.",
    }.get(status, "The connection or the server failed; retrying later usually works.")
    tried = f" after {retries} retries" if retries else ""
    message = (
        f"Pushing to {plan['repo_id']} stopped at step {step!r}{tried}: {redact(_short(err), token)}\n{hint}\n"
        f"Pushed: {done or 'nothing'}. Not pushed: {left}.\n"
        f"Everything is staged in {os.path.abspath(folder)}; finish the push with:\n"
        f"    hf-idsel push {os.path.abspath(folder)}"
    )
    return PushError(message, pushed=done, not_pushed=left, folder=os.path.abspath(folder), status=status)


# ---- a diverse_select result ----


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
    from .cards import card_facts, dataset_card  # cards imports this module's Hub layout constants

    card = dataset_card(manifest, card_facts(repo_id, pool_id, token), configs=[config_name])
    stage(folder, repo_id, subsets={config_name: subset}, manifests={config_name: manifest}, card=card, private=private, plot_manifest=manifest)
    logger.info("Staged the push of %d rows to %s in %s", len(subset), repo_id, folder)
    return push_staged(folder, private=private, token=token, max_retries=max_retries, backoff=backoff)
