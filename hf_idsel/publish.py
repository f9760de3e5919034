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
from dataclasses import dataclass

import datasets
import numpy as np

from .errors import InvalidArgumentError, PushError
from .manifest import Manifest, indices_digest
from .report import markdown_table, plot_selection
from .rounds import weight_entropy, write_round_file

logger = logging.getLogger(__name__)

PUSH_FILE = "hf_idsel_push.json"
DEFAULT_CONFIG = "default"
STAGING_DIR = "_hf_idsel_selection"  # the trainer stages under output_dir; Trainer.push_to_hub skips "_*" paths
ROUND_COLUMN = "selection_round"  # added to an iterative run's pushed rows: the round that drew each one
ITERATIVE_METHOD = "iterative-kmq"
TAGS = ["hf_idsel", "data-selection"]
PAPER = "arxiv:2409.11378"
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{8,}")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def template_path(name: str) -> str:
    """Path of a card template shipped in `model_cards/`."""
    from importlib.resources import files

    path = str(files("hf_idsel") / "model_cards" / name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"hf_idsel's card template {name!r} is missing from {os.path.dirname(path)}; reinstall hf_idsel.")
    return path


def check_repo_id(repo_id, argument: str = "repo_id") -> str:
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or len(repo_id) > 96 or "--" in repo_id or ".." in repo_id:
        raise InvalidArgumentError(
            f"`{argument}`={repo_id!r} is not a Hub repo id: use 'namespace/name' (letters, digits, '-', '_', '.')."
        )
    return repo_id


# ---- the card ----


@dataclass
class CardFacts:
    """The repo a card is for, and what it inherits from the pool's own card."""

    repo_id: str
    pool_id: str | None
    pool_license: str | list | None
    pool_language: str | list | None


def card_facts(repo_id: str, pool_id: str | None, token=None) -> CardFacts:
    """`CardFacts` for `repo_id`; `pool_id="builtin"` is the built-in pool (all sources MIT-licensed, see pool.py)."""
    if pool_id == "builtin":
        return CardFacts(repo_id, None, "mit", "en")
    license_, language = _pool_card_metadata(pool_id, token)
    return CardFacts(repo_id, pool_id, license_, language)


def _pool_card_metadata(pool_id: str | None, token=None) -> tuple[str | list | None, str | list | None]:
    """License and language from the pool's own dataset card on the Hub, when it has one."""
    if not pool_id:
        return None, None
    from huggingface_hub import DatasetCard

    try:
        card = DatasetCard.load(pool_id, token=token)
    except Exception as err:  # no card, no network, gated: the card just says less
        logger.info("Could not read the pool's dataset card %s (%s); license and language left out.", pool_id, type(err).__name__)
        return None, None
    return card.data.get("license"), card.data.get("language")


def _describe_k(manifest: Manifest) -> str:
    mode = manifest.k_selection.get("mode")
    if mode == "auto":
        scores = manifest.k_selection.get("silhouette", {})
        shown = ", ".join(f"{c}: {float(s):.3f}" for c, s in scores.items())
        return f"chosen by the best silhouette score among candidates ({shown})"
    return "fixed by the user"


def _describe_encoder(manifest: Manifest) -> str:
    encoder = manifest.encoder or {}
    if "id" in encoder:
        return f"`{encoder['id']}` at revision `{encoder['revision']}` (dim {encoder['dim']})"
    return f"precomputed vectors in column `{encoder.get('embedding_column')}` (dim {encoder.get('dim')})"


def _describe_render(manifest: Manifest) -> str:
    render = manifest.render
    if not render:
        return "n/a (precomputed embeddings)"
    what = "prompt and answer" if render.get("include_answer", True) else "prompt only"
    return f"{what}, format `{render.get('format')}`, columns {render.get('columns')}"


def _describe_budget(manifest: Manifest) -> str:
    budget = manifest.budget
    if budget.get("max_tokens"):
        return f"{budget['tokens']} of {budget['max_tokens']} tokens ({budget['tokenizer']}), {budget['rows']} rows"
    requested = budget.get("requested")
    rows = budget.get("rows")
    if isinstance(requested, float) and requested <= 1:
        return f"{rows} rows ({requested:g} of the pool)"
    return f"{rows} rows"


def rounds_markdown(rounds: list[dict]) -> str:
    """One line per round: rows drawn, rows scored, weight entropy, largest weights."""
    lines = ["| round | rows drawn | rows scored | cumulative | weight entropy after | top-3 clusters by weight after |", "|---:|---:|---:|---:|---:|---|"]
    for r in rounds:
        weights = np.asarray(r["weights"], dtype=float)
        entropy = weight_entropy(weights)
        top = np.argsort(-weights, kind="stable")[:3]
        shown = ", ".join(f"{int(j)} ({weights[j]:.3f})" for j in top)
        scored = r.get("scored_rows", 0) if r.get("scored", True) else "not scored (last round)"
        lines.append(f"| {r['round']} | {len(r['selected'])} | {scored} | {r['cumulative_size']} | {entropy:.3f} | {shown} |")
    return "\n".join(lines)


def dataset_card(manifest: Manifest, facts: CardFacts, *, configs: list[str], rounds: list[dict] | None = None, run_args: dict | None = None):
    """The dataset card of a pushed selection (huggingface_hub `DatasetCard`), rendered from `model_cards/dataset_card.md`."""
    from huggingface_hub import DatasetCard, DatasetCardData

    from . import __version__

    rows = len(manifest.selected_indices)
    data = DatasetCardData(
        license=facts.pool_license,
        language=facts.pool_language,
        source_datasets=[facts.pool_id] if facts.pool_id else None,
        pretty_name=f"{facts.repo_id.split('/')[-1]}",
        size_categories=_size_category(rows),
        tags=list(TAGS),
    )
    iterative = bool(rounds)
    config_lines = []
    for name in configs:
        if name == DEFAULT_CONFIG:
            what = "every selected row" + (" (all rounds)" if iterative else "")
        else:
            what = f"the rows drawn in {name.replace('_', ' ')}"
        config_lines.append(f"- `{name}`: {what}; `load_dataset(\"{facts.repo_id}\", \"{name}\")`")
    run_args = run_args or {}
    return DatasetCard.from_template(
        data,
        template_path=template_path("dataset_card.md"),
        pretty_name=data.pretty_name,
        repo_id=facts.repo_id,
        rows=rows,
        pool_id=facts.pool_id,
        pool_link=f"[{facts.pool_id}](https://huggingface.co/datasets/{facts.pool_id})" if facts.pool_id else None,
        pool_rows=manifest.pool["num_rows"],
        pool_digest=manifest.pool["digest"],
        method=manifest.method,
        budget=_describe_budget(manifest),
        k=manifest.k,
        k_how=_describe_k(manifest),
        encoder=_describe_encoder(manifest),
        render=_describe_render(manifest),
        seed=manifest.seed,
        iterative=iterative,
        rounds_summary=f"{len(rounds)} rounds of {', '.join(str(len(r['selected'])) for r in rounds)} rows" if iterative else "",
        scorer=run_args.get("scorer", rounds[-1].get("scorer") if iterative else ""),
        weight_update=run_args.get("weight_update", ""),
        rounds_table=rounds_markdown(rounds) if iterative else "",
        table=markdown_table(manifest, rounds),
        configs="\n".join(config_lines),
        version=__version__,
    )


def _size_category(rows: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < bound:
            return name
    return "1M<n<10M"


def model_card(
    manifest: Manifest,
    *,
    model_name: str,
    base_model: str | None,
    dataset_id: str | None,
    license: str,
    tags: list[str],
    library_name: str,
    rounds: list[dict],
    run_args: dict,
    hyperparameters: list[tuple[str, object]],
    pool_id: str | None,
):
    """The model card of a model trained by `IterativeSelectionTrainer`, rendered from `model_cards/model_card.md`."""
    from huggingface_hub import ModelCard, ModelCardData

    from .manifest import library_versions

    data = ModelCardData(
        base_model=base_model,
        datasets=[dataset_id] if dataset_id else None,
        license=license,
        library_name=library_name,
        model_name=model_name,
        tags=list(dict.fromkeys(list(tags) + TAGS + ["trl", "sft", PAPER])),
    )
    versions = library_versions()
    for name in ("trl", "peft", "accelerate"):
        try:
            import importlib.metadata

            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ModelCard.from_template(
        data,
        template_path=template_path("model_card.md"),
        model_name=model_name,
        base_model=base_model,
        dataset_id=dataset_id,
        pool_rows=manifest.pool["num_rows"],
        pool_id=pool_id,
        encoder=_describe_encoder(manifest),
        k=manifest.k,
        k_how=_describe_k(manifest),
        rounds=len(rounds),
        round_rows=", ".join(str(len(r["selected"])) for r in rounds),
        quality_column=run_args.get("quality_column"),
        scorer=run_args.get("scorer"),
        weight_update=run_args.get("weight_update"),
        round_mode=run_args.get("round_mode"),
        rounds_table=rounds_markdown(rounds) if rounds else "",
        hyperparameters=[(name, value) for name, value in hyperparameters],
        versions=sorted(versions.items()),
    )


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
        manifest.save(os.path.join(folder, _manifest_path(name)))
    if rounds:
        for r in rounds:
            write_round_file(os.path.join(folder, "selection"), r)
    if plot_manifest is not None:
        plot_selection(plot_manifest, os.path.join(folder, "selection.png"), rounds)
    if card is not None:
        card.save(os.path.join(folder, "README.md"))
        _undo(plan, "card")
    _undo(plan, "files")
    _write_plan(folder, plan)
    return folder


def _manifest_path(config: str) -> str:
    return "manifest.json" if config == DEFAULT_CONFIG else os.path.join("manifests", f"{config}.json")


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
    repo_id = plan["repo_id"]
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
        logger.info("Pushed %s to %s", step, repo_id)
    return f"{api.endpoint}/datasets/{repo_id}"


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


def _run_step(api, folder: str, plan: dict, step: str, token) -> None:
    repo_id = plan["repo_id"]
    if step == "repo":
        api.create_repo(repo_id, repo_type="dataset", private=plan.get("private"), exist_ok=True)
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
        patterns = ["manifest.json", "manifests/*.json", "selection/*.json", "selection.png"]
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
        model = plan["model"]
        api.create_repo(model["repo_id"], private=plan.get("private"), exist_ok=True)
        api.upload_folder(
            repo_id=model["repo_id"],
            folder_path=os.path.normpath(os.path.join(folder, model["folder"])),
            commit_message=model.get("commit_message") or "End of training",
            revision=model.get("revision"),
            # What Trainer.push_to_hub leaves out: checkpoints (pushed by hub_strategy) and staging folders.
            ignore_patterns=["_*", "checkpoint-*"],
        )
    else:
        raise InvalidArgumentError(f"Unknown push step {step!r} in {os.path.join(folder, PUSH_FILE)}.")


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
) -> str:
    """Push a `diverse_select` result to a Hub dataset repo: rows, `manifest.json`, a card and a plot.

    Args:
        subset (`datasets.Dataset`):
            The result of `diverse_select` (with `source_index` and `cluster`).
        repo_id (`str`):
            Dataset repo, `"namespace/name"`; created if needed.
        manifest (`Manifest`, `dict` or `str`, *optional*):
            The selection's manifest; default: the one `diverse_select` made for `subset` in this process.
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
        from .manifest import manifest_for

        manifest = manifest_for(subset)
        if manifest is None:
            raise InvalidArgumentError(
                "No manifest is known for `subset`: pass `manifest=` (from `diverse_select(..., return_manifest=True)` "
                "or a saved manifest.json)."
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
    return push_staged(folder, private=private, token=token, max_retries=max_retries)
