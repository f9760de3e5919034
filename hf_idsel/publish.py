"""Publish: the push engine. Selected rows, manifests, a dataset card and a plot go to the Hub, nothing lost on failure.

Every push is staged first: the rows (one parquet file per config), the manifests, the plot, the
round files and the card are written to a local folder together with `hf_idsel_push.json`, which
lists the push steps and the ones already done. Steps then run in order (repository, each config
through `datasets`' own `push_to_hub`, the other files, the card last so that the `configs`
metadata `datasets` wrote is kept). Every request has connect and read timeouts ([`hub_client`]); a step
that fails with a network error, a timeout or a server error is retried with back-off; a failure that
retrying cannot fix stops at once. Either way [`PushError`] says what was pushed, what was not, and the
command that finishes the push from the staged folder (`hf-idsel push FOLDER`).

What goes out is what was staged: the plan records the sha256 of each data file as written, and a file
edited (or removed) since is refused by name before any request. Manifests go out as published
([`provenance.published_manifest`]): a local pool is named by its file name and content digest, and no
file holding the staging folder's path or a local path the manifests record is uploaded.

The engine pushes the cards it finds staged; it renders none. Where a push learns its repos only
while it runs (a bare repo name the Hub puts under the token's namespace, the model repo), the
[`CardWriters`] it is given write the cards again for them: [`hub.CARD_WRITERS`] are hf_idsel's.
The layout of the staged folder and of the repos is [`hub_layout`]'s.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

import datasets

from .errors import InvalidArgumentError, PushError, redact_token
from .hub_client import hub_timeouts
from .hub_layout import (
    CARD_FILE,
    CLUSTER_MAP_FILE,
    DATA_DIR,
    DEFAULT_CONFIG,
    MANIFEST_FILE,
    MANIFESTS_DIR,
    PLOT_FILE,
    PUSH_FILE,
    ROUND_COLUMN,
    SELECTION_DIR,
    SUBSET_FILE,
    UPLOADED_FILES,
    check_repo_id,
    check_staged_files,
    config_order,
    data_file,
    is_staged,
    manifest_path,
    read_plan,
    record_staged_file,
    write_plan,
)
from .manifest import Manifest, selection_subset
from .provenance import local_paths, published_manifest
from .report import plot_cluster_map, plot_selection
from .rounds import RoundRecord, round_records, write_round_file

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class CardWriters:
    """What writes a staged push's cards again once the push knows the repos they go to.

    Args:
        dataset (`Callable[[str, str, str | bool | None], bool]`):
            `(folder, repo_id, token)`: write the dataset card staged in `folder` for the dataset repo `repo_id`.
        model (`Callable[[str, str, str | None], bool]`):
            `(model_folder, model_repo_id, dataset_repo_id)`: write the model card in `model_folder` for the model
            repo it is uploaded to and the dataset repo of its selection.
    """

    dataset: Callable[[str, str, str | bool | None], bool]
    model: Callable[[str, str, str | None], bool]


# ---- staging ----


def stage(
    folder: str,
    repo_id: str,
    *,
    subsets: dict[str, datasets.Dataset],
    manifests: dict[str, Manifest],
    card,
    rounds: list[RoundRecord] | None = None,
    private: bool | None = None,
    plot_manifest: Manifest | None = None,
    license: str | None = None,
) -> str:
    """Write everything a push needs under `folder`, and the push plan `hf_idsel_push.json`.

    Configs already staged and pushed stay recorded: staging `round_2` after `round_1` was pushed
    only adds the new steps. The plan records the sha256 of every data file as written (and of a
    `select --out` folder's `subset.parquet`), and the push refuses a file edited since.
    """
    rounds = round_records(rounds or [])
    os.makedirs(os.path.join(folder, DATA_DIR), exist_ok=True)
    plan = read_plan(folder) if is_staged(folder) else None
    if plan is not None and plan["repo_id"] != repo_id:
        raise InvalidArgumentError(
            f"{folder} already stages a push to {plan['repo_id']!r}, not {repo_id!r}: use another local folder."
        )
    plan = plan or {"repo_id": repo_id, "repo_type": "dataset", "private": private, "configs": [], "done": [], "digests": {}}
    plan.setdefault("digests", {})
    if license is not None:
        plan["license"] = license
    if os.path.isfile(os.path.join(folder, SUBSET_FILE)):  # a `select --out` folder: checked by the caller
        record_staged_file(plan, folder, SUBSET_FILE)
    for name, subset in subsets.items():
        subset.to_parquet(os.path.join(folder, data_file(name)))
        record_staged_file(plan, folder, data_file(name))
        if name not in plan["configs"]:
            plan["configs"].append(name)
        _undo(plan, f"config:{name}")
    for name, manifest in manifests.items():
        manifest.save(os.path.join(folder, manifest_path(name)))
    for r in rounds:
        write_round_file(os.path.join(folder, SELECTION_DIR), r)
    if plot_manifest is not None:
        plot_selection(plot_manifest, os.path.join(folder, PLOT_FILE), rounds or None)
        if plot_manifest.cluster_map:
            plot_cluster_map(plot_manifest, os.path.join(folder, CLUSTER_MAP_FILE))
    if card is not None:
        card.save(os.path.join(folder, CARD_FILE))
        _undo(plan, "card")
    _undo(plan, "files")
    write_plan(folder, plan)
    return folder


def stage_run(
    folder: str,
    repo_id: str,
    *,
    pool: datasets.Dataset,
    rounds: list[RoundRecord],
    manifests: dict[str, Manifest],
    everything: Manifest,
    card,
    private: bool | None = None,
    license: str | None = None,
) -> str:
    """Stage configs of an iterative run: each config's rows (with the round that drew each, `ROUND_COLUMN`) and
    manifest, every round file, the plot of all rows selected so far and the run's dataset card.

    Args:
        folder (`str`):
            The run's staging folder ([`hub_layout.staging_folder`]).
        repo_id (`str`):
            The dataset repo the selection goes to.
        pool (`datasets.Dataset`):
            The pool the run selects from.
        rounds (`list[RoundRecord]`):
            The finished rounds.
        manifests (`dict[str, Manifest]`):
            The configs to stage (`round_<r>`, `default`) and their manifests.
        everything (`Manifest`):
            The manifest of every row selected so far: the plot's.
        card (`DatasetCard`, *optional*):
            The run's dataset card ([`cards.run_dataset_card`]).
        private (`bool`, *optional*):
            Create the repo private.
        license (`str`, *optional*):
            The selection's licence (its card's), kept in the plan for the cards written again at push time.
    """
    rounds = round_records(rounds)
    return stage(
        folder, repo_id,
        subsets={name: iterative_subset(pool, manifest, rounds) for name, manifest in manifests.items()},
        manifests=manifests, card=card, rounds=rounds, private=private, plot_manifest=everything, license=license,
    )


def iterative_subset(pool: datasets.Dataset, manifest: Manifest, rounds: list[RoundRecord]) -> datasets.Dataset:
    """The rows of an iterative run's manifest, each with the round that drew it (`ROUND_COLUMN`)."""
    round_of = {row: r.round for r in round_records(rounds) for row in r.selected}
    drawn_in = [round_of[row] for row in manifest.selected_indices]
    return selection_subset(pool, manifest.selected_indices, manifest.selected_clusters, **{ROUND_COLUMN: drawn_in})


def _undo(plan: dict, step: str) -> None:
    if step in plan["done"]:
        plan["done"].remove(step)


def plan_steps(plan: dict, include_model: bool = True) -> list[str]:
    # Default config last among the data: datasets then marks it as the default without a later rewrite.
    configs = sorted(plan["configs"], key=lambda c: (c == DEFAULT_CONFIG, config_order(c)))
    steps = ["repo"] + [f"config:{c}" for c in configs] + ["files", "card"]
    if include_model and plan.get("model"):
        steps.append("model")
    return steps


# ---- pushing ----


RESTAGE_FIX = (
    "stage the selection again from its source (`hf-idsel select ... --overwrite --push-to-hub REPO`, `push_selection(...)`, "
    "or the trainer's `push_to_hub()`), or put the file back as it was staged."
)
"""What a refused staged file's error tells the user to do."""


def push_staged(
    folder: str,
    repo_id: str | None = None,
    *,
    private: bool | None = None,
    token=None,
    include_model: bool = True,
    max_retries: int = 4,
    backoff: float = 1.0,
    cards: CardWriters | None = None,
    license: str | None = None,
    timeout=None,
) -> str:
    """Run the steps of a staged push that are not done yet; returns the dataset repo's URL.

    Before any request, every data file still to upload is checked against the sha256 recorded when it was
    staged: an edited (or missing) file is refused by name. Every request has connect and read timeouts
    ([`hub_client.hub_timeouts`]): a Hub that stops answering fails the step, which is retried like a network error.
    Manifests are uploaded as published ([`provenance.published_manifest`]: no absolute local path), and no file
    holding the staging folder's path or a local path its manifests record is uploaded.

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
            Retries of a step that failed with a network error, a timeout, 408/429 or a 5xx answer.
        backoff (`float`, *optional*, defaults to `1.0`):
            First wait in seconds; doubles at each retry.
        cards ([`CardWriters`], *optional*):
            What writes the cards again for the repos the push reaches ([`hub.CARD_WRITERS`]); without it the
            staged cards are pushed as they are.
        license (`str`, *optional*):
            The selection's licence: recorded in the plan, and the dataset card written again with it.
        timeout (`float` or `tuple[float, float]`, *optional*):
            Seconds a request waits for a connection and for each read, or `(connect, read)`; default: the
            environment's `HF_IDSEL_HUB_CONNECT_TIMEOUT` / `HF_IDSEL_HUB_READ_TIMEOUT`, else 10 / 60.
    """
    from huggingface_hub import HfApi

    from .hub_client import HubTimeouts

    timeouts = HubTimeouts.resolve(timeout)
    plan = read_plan(folder)
    pending = [c for c in plan["configs"] if f"config:{c}" not in plan["done"] or repo_id not in (None, plan["repo_id"])]
    checked = [data_file(c) for c in pending] + ([SUBSET_FILE] if SUBSET_FILE in plan.get("digests", {}) else [])
    check_staged_files(folder, plan, checked, RESTAGE_FIX)
    if license is not None and license != plan.get("license"):
        plan["license"] = license
        _undo(plan, "card")
        write_plan(folder, plan)
        if cards is not None:
            cards.dataset(folder, repo_id or plan["repo_id"], token)
    if repo_id is not None and repo_id != plan["repo_id"]:
        check_repo_id(repo_id)
        plan.update(repo_id=repo_id, done=[])
        if cards is not None:
            cards.dataset(folder, repo_id, token)
    if private is not None:
        plan["private"] = private
    api = HfApi(token=token)
    steps = plan_steps(plan, include_model)
    with hub_timeouts(timeouts):
        for step in steps:
            if step in plan["done"]:
                continue
            _run_with_retries(
                lambda: _run_step(api, folder, plan, step, token, cards), step, plan, steps, folder, token, max_retries, backoff
            )
            plan["done"].append(step)
            write_plan(folder, plan)
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
    write_plan(folder, plan)


def _run_step(api, folder: str, plan: dict, step: str, token, cards: CardWriters | None) -> None:
    repo_id = plan["repo_id"]
    if step == "repo":
        url = api.create_repo(repo_id, repo_type="dataset", private=plan.get("private"), exist_ok=True)
        if url.repo_id != repo_id:  # a bare name: the Hub put the repo under the token's namespace
            plan["repo_id"] = url.repo_id
            if cards is not None:
                cards.dataset(folder, url.repo_id, token)
    elif step.startswith("config:"):
        name = step.split(":", 1)[1]
        rows = datasets.Dataset.from_parquet(os.path.join(folder, data_file(name)))
        rows.push_to_hub(
            repo_id,
            config_name=name,
            split="train",
            token=token,
            private=plan.get("private"),
            commit_message=f"hf_idsel: rows of config {name}",
        )
    elif step == "files":
        from huggingface_hub import CommitOperationAdd

        operations = [CommitOperationAdd(path, content) for path, content in published_files(folder)]
        if operations:
            api.create_commit(
                repo_id=repo_id, repo_type="dataset", operations=operations,
                commit_message="hf_idsel: manifests, round files and plot",
            )
    elif step == "card":
        _push_card(api, folder, repo_id, token)
    elif step == "model":
        model = plan["model"]
        model["repo_id"] = api.create_repo(model["repo_id"], private=plan.get("private"), exist_ok=True).repo_id
        model_folder = os.path.normpath(os.path.join(folder, model["folder"]))
        if cards is not None:
            cards.model(model_folder, model["repo_id"], repo_id)  # the card names the repos pushed to
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


def published_files(folder: str) -> list[tuple[str, bytes]]:
    """What the "files" step uploads from a staged folder, as `(path in the repo, bytes)`: the manifests as published
    ([`provenance.published_manifest`]), the round files and the plots.

    Raises:
        [`InvalidArgumentError`]: a file would publish the staging folder's path or a local path a manifest records.
    """
    files, forbidden = [], [os.path.abspath(folder)]
    for pattern in UPLOADED_FILES:
        for path in sorted(glob.glob(os.path.join(folder, pattern))):
            in_repo = os.path.relpath(path, folder).replace(os.sep, "/")
            if in_repo == MANIFEST_FILE or in_repo.startswith(f"{MANIFESTS_DIR}/"):
                manifest = Manifest.load(path)
                forbidden += local_paths(manifest)
                content = (published_manifest(manifest).to_json() + "\n").encode()
            else:
                with open(path, "rb") as f:
                    content = f.read()
            files.append((in_repo, content))
    for in_repo, content in files:
        check_no_local_path(in_repo, content, forbidden)
    return files


def check_no_local_path(name: str, content: bytes | str, paths: list[str]) -> None:
    """Refuse to publish `content` (the file `name`) when it holds one of the local `paths`."""
    content = content.encode() if isinstance(content, str) else content
    for path in paths:
        if len(path) > 1 and path.encode() in content:
            raise InvalidArgumentError(
                f"{name} holds the local path {path!r}; hf_idsel publishes no local path (report this as a bug, with "
                "the staged folder)."
            )


def _push_card(api, folder: str, repo_id: str, token) -> None:
    """Our card with the `configs`/`dataset_info` metadata `datasets` wrote to the repo's card."""
    from huggingface_hub import DatasetCard

    path = os.path.join(folder, CARD_FILE)
    if not os.path.isfile(path):
        return
    ours = DatasetCard.load(path)
    forbidden = [os.path.abspath(folder)] + [p for m in _staged_manifests(folder) for p in local_paths(m)]
    check_no_local_path(CARD_FILE, str(ours), forbidden)
    try:
        remote = DatasetCard.load(repo_id, token=token)
        for key in ("configs", "dataset_info"):
            if remote.data.get(key) is not None:
                ours.data[key] = remote.data.get(key)
    except Exception as err:
        # The card datasets wrote is always there after the rows: only its absence is no error. A timeout or a
        # dropped connection is retried, never taken for "no card" (the `configs` metadata would be lost).
        if _status(err) != 404:
            raise
    ours.push_to_hub(repo_id, token=token, commit_message="hf_idsel: dataset card")


def _staged_manifests(folder: str) -> list[Manifest]:
    paths = [os.path.join(folder, MANIFEST_FILE)] + sorted(glob.glob(os.path.join(folder, MANIFESTS_DIR, "*.json")))
    return [Manifest.load(p) for p in paths if os.path.isfile(p)]


def _status(err) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _retryable(err, step: str) -> bool:
    status = _status(err)
    if status is not None:
        # 409/412: another commit landed first; a fresh attempt commits on top of it.
        return status in RETRY_STATUS or (status in (409, 412) and step != "repo")
    return network_failure(err)


def network_failure(err) -> bool:
    """Whether `err` is a network error (a refused or dropped connection, a timeout), or was raised because of one:
    huggingface_hub turns a download that timed out into `LocalEntryNotFoundError` with the timeout as its cause."""
    seen = err
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, (ConnectionError, TimeoutError)) or _is_network_error(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _timed_out(err) -> bool:
    for _ in range(8):
        if err is None:
            return False
        if isinstance(err, TimeoutError) or any(cls.__name__ == "TimeoutException" for cls in type(err).__mro__):
            return True
        err = err.__cause__ or err.__context__
    return False


def _is_network_error(err) -> bool:
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
                step, plan["repo_id"], redact_token(_short(err), token), attempt, max_retries, wait,
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
    if status is None and _timed_out(err):
        hint = (
            "The Hub did not answer in time (connect and read timeouts: HF_IDSEL_HUB_CONNECT_TIMEOUT / "
            "HF_IDSEL_HUB_READ_TIMEOUT, or `timeout=`); retrying later usually works."
        )
    if isinstance(err, InvalidArgumentError):
        hint = "Nothing was sent for this step."
    tried = f" after {retries} retries" if retries else ""
    message = (
        f"Pushing to {plan['repo_id']} stopped at step {step!r}{tried}: {redact_token(_short(err), token)}\n{hint}\n"
        f"Pushed: {done or 'nothing'}. Not pushed: {left}.\n"
        f"Everything is staged in {os.path.abspath(folder)}; finish the push with:\n"
        f"    hf-idsel push {os.path.abspath(folder)}"
    )
    return PushError(message, pushed=done, not_pushed=left, folder=os.path.abspath(folder), status=status)
