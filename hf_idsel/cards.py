"""Cards: the dataset card of a pushed selection and the model card of a trained model.

Both are rendered from the templates in `model_cards/` with huggingface_hub's `DatasetCard` and
`ModelCard`. A dataset card inherits `license` and `language` from the pool's own card on the Hub.
Staging and pushing them is [`publish`]'s job.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from .describe import short_terms
from .errors import InvalidArgumentError
from .manifest import Manifest
from .pool import BUILTIN_POOL
from .publish import DEFAULT_CONFIG
from .report import WEIGHT_CHANGE_MARGIN, markdown_cell, markdown_table, weight_changes
from .rounds import weight_entropy

logger = logging.getLogger(__name__)

TAGS = ["hf_idsel", "data-selection"]
PAPER = "arxiv:2409.11378"


def template_path(name: str) -> str:
    """Path of a card template shipped in `model_cards/`."""
    from importlib.resources import files

    path = str(files("hf_idsel") / "model_cards" / name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"hf_idsel's card template {name!r} is missing from {os.path.dirname(path)}; reinstall hf_idsel.")
    return path


@dataclass
class CardFacts:
    """The repo a card is for, and what it inherits from the pool's own card."""

    repo_id: str
    pool_id: str | None
    pool_license: str | list | None
    pool_language: str | list | None


def card_facts(repo_id: str, pool_id: str | None, token=None) -> CardFacts:
    """`CardFacts` for `repo_id`; `pool_id="builtin"` is the built-in pool (all sources MIT-licensed, see pool.py)."""
    if pool_id == BUILTIN_POOL:
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


def weight_changes_markdown(rounds: list[dict], descriptions: list[dict] | None) -> str:
    """The clusters an iterative run favoured and those it cut (see [`report.weight_changes`]), with their descriptions."""
    favoured, cut = weight_changes(rounds)
    weights = rounds[-1]["weights"]
    uniform = 1 / len(weights)
    lines = [
        f"Against the uniform weight {uniform:.3f} every cluster started from, after round {rounds[-1]['round']} "
        f"(more than {WEIGHT_CHANGE_MARGIN:.0%} above or below it, at most three each):",
    ]
    for what, clusters in (("favoured", favoured), ("cut", cut)):
        lines.append(f"\n**Clusters the run {what}**\n")
        if not clusters:
            lines.append("- none")
        for j in clusters:
            line = f"- cluster {j} ({uniform:.3f} → {weights[j]:.3f})"
            if descriptions:
                terms = short_terms(descriptions[j], 5)
                examples = descriptions[j].get("examples") or []
                line += f": {markdown_cell(terms)}" if terms else ""
                line += f" — e.g. “{markdown_cell(examples[0])}”" if examples else ""
            lines.append(line)
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
        weight_changes=weight_changes_markdown(rounds, manifest.cluster_descriptions) if iterative else "",
        described=bool(manifest.cluster_descriptions),
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


def base_model_id(model) -> str | None:
    """The Hub id a model was loaded from (`None` for a local folder or a model built in memory)."""
    if isinstance(model, str):
        name = model
    else:
        name = getattr(getattr(model, "config", None), "_name_or_path", None)
        peft_config = getattr(model, "peft_config", None)
        if peft_config:
            name = getattr(next(iter(peft_config.values())), "base_model_name_or_path", None) or name
    return name if name and not os.path.isdir(name) else None


def base_model_license(base: str | None, hub_license: str | None, token=None) -> str:
    """The model card's license: `hub_license`, else the base model card's; refused before training when neither."""
    if hub_license:
        return hub_license
    if base:
        from huggingface_hub import ModelCard

        try:
            license_ = ModelCard.load(base, token=token).data.get("license")
        except Exception as err:
            logger.info("Could not read the base model's card %s (%s).", base, type(err).__name__)
            license_ = None
        if license_:
            return license_
    raise InvalidArgumentError(
        "`push_to_hub=True` needs a license for the model card: set `hub_license` (e.g. 'apache-2.0'; "
        f"the base model {base or '(a local path)'} has no readable card to take it from)."
    )


def training_hyperparameters(args, *, processes: int, budget_rows: int, k: int, scorer: str, global_steps: int, peft_config=None):
    """The model card's table of how an `IterativeSelectionTrainer` run trained and selected."""
    rows = [
        ("learning_rate", args.learning_rate),
        ("per_device_train_batch_size", args.per_device_train_batch_size),
        ("gradient_accumulation_steps", args.gradient_accumulation_steps),
        ("processes", processes),
        ("epochs (rounds x epochs_per_round)", args.num_train_epochs),
        ("lr_scheduler_type", getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        ("warmup_steps", args.warmup_steps),
        ("optimizer", getattr(args.optim, "value", args.optim)),
        ("max_length", args.max_length),
        ("seed", args.seed),
        ("budget (rows)", budget_rows),
        ("rounds", args.rounds),
        ("k", k),
        ("scorer", scorer),
        ("weight_update / temperature", f"{args.weight_update} / {args.weight_temperature}"),
        ("round_mode", args.round_mode),
        ("global steps", global_steps),
    ]
    if peft_config:
        lora = next(iter(peft_config.values()))
        rows.append(("peft", f"{type(lora).__name__} r={getattr(lora, 'r', '?')} alpha={getattr(lora, 'lora_alpha', '?')}"))
    return rows
