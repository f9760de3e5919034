"""Cards: the dataset card of a pushed selection and the model card of a trained model.

Both are rendered from the templates in `model_cards/` with huggingface_hub's `DatasetCard` and
`ModelCard`. A dataset card inherits `license` and `language` from the pool's own card on the Hub.
Staging and pushing them is [`publish`]'s job (this module never imports it: where a push needs a card
written again, [`hub.CARD_WRITERS`] hands it [`restage_dataset_card`] and [`refresh_model_card`]).
"""

from __future__ import annotations

import json
import logging
import os
import shlex

import numpy as np

from .describe import short_terms
from .errors import InvalidArgumentError
from .manifest import Manifest, library_versions
from .provenance import (
    BaseWeights,
    CardFacts,
    base_model_license,  # noqa: F401 (the trainer reads it here, with the other model card facts)
    card_facts,
    is_local_path,
    license_markdown,
    model_base_weights,
    model_name_or_path,
    pool_reference,
    published_manifest,
    rebuild_lines,
)
from .hub_layout import (
    CARD_FILE,
    DEFAULT_CONFIG,
    MANIFEST_FILE,
    data_file,
    is_staged,
    manifest_path,
    queue_model_upload,
    read_plan,
    round_config,
    staging_folder,
)
from .report import (
    WEIGHT_CHANGE_MARGIN,
    decontamination_summary,
    markdown_cell,
    markdown_table,
    read_rounds,
    target_markdown,
    target_summary,
    weight_changes,
)
from .rounds import RoundRecord, round_records, weight_entropy

logger = logging.getLogger(__name__)

TAGS = ["hf_idsel", "data-selection"]
PAPER = "arxiv:2409.11378"
MODEL_CARD_FACTS = "_hf_idsel_model_card.json"  # beside the model; uploads skip "_*" files
MODEL_FILES = ("config.json", "adapter_config.json")


def template_path(name: str) -> str:
    """Path of a card template shipped in `model_cards/`."""
    from importlib.resources import files

    path = str(files("hf_idsel") / "model_cards" / name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"hf_idsel's card template {name!r} is missing from {os.path.dirname(path)}; reinstall hf_idsel.")
    return path


def _describe_k(manifest: Manifest) -> str:
    mode = manifest.k_selection.get("mode")
    if mode == "auto":
        record = manifest.k_selection
        scores = record.get("silhouette", {})
        shown = ", ".join(f"{c}: {float(s):.3f}" for c, s in scores.items())
        estimator = record.get("estimator")
        if not estimator:  # recorded before k="auto" judged the whole pool
            return f"chosen by the best silhouette score among candidates ({shown})"
        error = max(record.get("standard_error", {}).values(), default=0.0)
        if "rule" not in record:  # recorded before k="auto" followed the paper's range
            return (
                f"chosen by k=\"auto\": the best cosine silhouette of the whole pool's k-means clustering among "
                f"{len(scores)} candidates (k: silhouette {shown}), averaged over {estimator['sample_size']:,} rows "
                f"(standard error at most {error:.4f})"
            )
        bounds, ties = record.get("range"), record.get("ties")
        within = f"k from {bounds['lower']} to {bounds['upper']}" if bounds else "the candidates given"
        clustered = (
            "the whole pool's k-means clustering" if "search_rows" not in estimator else
            f"k-means on a seeded sample of {estimator['search_rows']:,} rows (the whole pool then clustered at the chosen k)"
        )
        text = (
            f"chosen by k=\"auto\" (rule {record['rule']!r}, {within}): the cosine silhouette of {clustered} "
            f"(k: silhouette {shown}), averaged over {estimator['sample_size']:,} rows (standard "
            f"error at most {error:.4f}); local maxima at k = {', '.join(str(c) for c in record.get('local_maxima', []))}"
        )
        if ties:
            others = [c for c in ties["tied"] if c != record["best"]]
            text += (
                f"; near-ties of the best (k={record['best']}) within {ties['z']:g} sd of the noise (k-means seed-to-seed "
                f"spread {record['seed_check']['spread']:.4f}): "
                + (f"{', '.join(str(c) for c in others)}, the smallest chosen" if others else "none")
            )
        return text
    if mode in ("pool", "source"):
        groups = "one per source" if mode == "source" else "the whole pool"
        return f"no k-means: method {manifest.method} draws without vectors, from groups ({groups})"
    return "fixed by the user"


def _describe_encoder(manifest: Manifest) -> str:
    encoder = manifest.encoder or {}
    if manifest.encoder is None:
        return f"none: method {manifest.method} draws without vectors"
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


def rounds_markdown(rounds: list[RoundRecord]) -> str:
    """One line per round: rows drawn, rows scored, weight entropy, largest weights."""
    lines = ["| round | rows drawn | rows scored | cumulative | weight entropy after | top-3 clusters by weight after |", "|---:|---:|---:|---:|---:|---|"]
    for r in round_records(rounds):
        weights = np.asarray(r.weights, dtype=float)
        entropy = weight_entropy(weights)
        top = np.argsort(-weights, kind="stable")[:3]
        shown = ", ".join(f"{int(j)} ({weights[j]:.3f})" for j in top)
        scored = r.scored_rows if r.scored else "not scored (last round)"
        lines.append(f"| {r.round} | {len(r.selected)} | {scored} | {r.cumulative_size} | {entropy:.3f} | {shown} |")
    return "\n".join(lines)


def _staged_folder(facts: CardFacts) -> str:
    if not facts.folder:
        raise InvalidArgumentError(
            f"The dataset card of {facts.repo_id!r} needs a Hub repo id with its namespace, or the folder its rows are staged in."
        )
    return os.path.abspath(facts.folder)


def _load_line(facts: CardFacts, config: str) -> str:
    """The line that loads one config's rows: from the Hub repo, or from the staged parquet file of a run not pushed."""
    if facts.hub_id:
        return f"load_dataset({json.dumps(facts.hub_id)}, {json.dumps(config)})"
    data_files = os.path.join(_staged_folder(facts), data_file(config))
    return f'load_dataset("parquet", data_files={json.dumps(data_files)}, split="train")'


def _selection_source(facts: CardFacts, iterative: bool) -> str:
    """What `load_selection` reads: the Hub repo, or the staged manifest (round 1's for an iterative run)."""
    if facts.hub_id:
        return json.dumps(facts.hub_id)
    manifest = manifest_path(round_config(1)) if iterative else MANIFEST_FILE
    return json.dumps(os.path.join(_staged_folder(facts), manifest))


def weight_changes_markdown(rounds: list[RoundRecord], descriptions: list[dict] | None) -> str:
    """The clusters an iterative run favoured and those it cut (see [`report.weight_changes`]), with their descriptions."""
    rounds = round_records(rounds)
    favoured, cut = weight_changes(rounds)
    weights = rounds[-1].weights
    uniform = 1 / len(weights)
    lines = [
        f"Against the uniform weight {uniform:.3f} every cluster started from, after round {rounds[-1].round} "
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


def dataset_card(
    manifest: Manifest, facts: CardFacts, *, configs: list[str], rounds: list[RoundRecord] | None = None,
    run_args: dict | None = None,
):
    """The dataset card of a pushed selection (huggingface_hub `DatasetCard`), rendered from `model_cards/dataset_card.md`.

    The card describes the manifest as it is published ([`provenance.published_manifest`]): the pool by a reference
    that travels (a Hub id with its config, split and revision, the built-in pool's recipe, a local file's name and
    content digest), never by a local path.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    from . import __version__

    manifest = published_manifest(manifest)
    reference = pool_reference(manifest, facts.pool_id)
    rounds = round_records(rounds or [])
    rows = len(manifest.selected_indices)
    data = DatasetCardData(
        license=facts.card_license,
        language=facts.pool_language,
        source_datasets=[reference.hub_id] if reference.hub_id else None,
        pretty_name=f"{facts.repo_id.split('/')[-1]}",
        size_categories=_size_category(rows),
        task_categories=["text-generation"],
        tags=list(TAGS),
    )
    iterative = bool(rounds)
    config_lines = []
    for name in configs:
        if name == DEFAULT_CONFIG:
            what = "every selected row" + (" (all rounds)" if iterative else "")
        else:
            what = f"the rows drawn in {name.replace('_', ' ')}"
        config_lines.append(f"- `{name}`: {what}; `{_load_line(facts, name)}`")
    run_args = run_args or {}
    pool_words = {
        "hub": f"[{reference.hub_id}](https://huggingface.co/datasets/{reference.hub_id})",
        "builtin": f"hf_idsel's built-in pool ({reference.num_rows:,} rows)",
        "local": f"the local file `{reference.name}` ({reference.num_rows:,} rows)",
    }.get(reference.kind, f"a {reference.num_rows}-row instruction pool")
    rebuild = rebuild_lines(reference, _selection_source(facts, iterative), "round_1" if facts.hub_id and iterative else None)
    return DatasetCard.from_template(
        data,
        template_path=template_path("dataset_card.md"),
        pretty_name=data.pretty_name,
        hub_id=facts.hub_id,
        staged=None if facts.hub_id else _staged_folder(facts),
        rows=rows,
        pool_words=pool_words,
        pool=reference.describe(),
        licenses=license_markdown(reference, facts),
        rebuild="\n".join(rebuild),
        method=manifest.method,
        budget=_describe_budget(manifest),
        k=manifest.k,
        k_how=_describe_k(manifest),
        encoder=_describe_encoder(manifest),
        render=_describe_render(manifest),
        seed=manifest.seed,
        iterative=iterative,
        rounds_summary=f"{len(rounds)} rounds of {', '.join(str(len(r.selected)) for r in rounds)} rows" if iterative else "",
        scorer=run_args.get("scorer", rounds[-1].scorer if iterative else ""),
        weight_update=run_args.get("weight_update", ""),
        rounds_table=rounds_markdown(rounds) if iterative else "",
        weight_changes=weight_changes_markdown(rounds, manifest.cluster_descriptions) if iterative else "",
        described=bool(manifest.cluster_descriptions),
        cluster_map=bool(manifest.cluster_map),
        decontamination=decontamination_markdown(manifest.decontamination),
        target=target_markdown(manifest),
        table=markdown_table(manifest, rounds or None),
        configs="\n".join(config_lines),
        version=__version__,
    )


def run_dataset_card(
    everything: Manifest,
    rounds: list[RoundRecord],
    *,
    repo_id: str,
    pool_id: str | None,
    folder: str,
    scorer: str,
    weight_update: str,
    token=None,
    license: str | None = None,
):
    """The dataset card of an `IterativeSelectionTrainer` run: a config per finished round and the default one,
    the rounds table, and the run's scorer and weight rule.

    Args:
        everything (`Manifest`):
            The manifest of every row selected so far (the default config's).
        rounds (`list[RoundRecord]`):
            The finished rounds.
        repo_id (`str`):
            The run's dataset repo (a bare name while it has no Hub owner yet).
        pool_id (`str`, *optional*):
            Hub id of the pool.
        folder (`str`):
            The run's staging folder: the card's usage lines read from it while `repo_id` names no Hub repo.
        scorer (`str`):
            The scorer's name.
        weight_update (`str`):
            The weight rule.
        token (`str`, *optional*):
            Hub token, to read the pool's card for its license and language.
        license (`str`, *optional*):
            The selection's licence, in place of the pool's.
    """
    rounds = round_records(rounds)
    return dataset_card(
        everything,
        card_facts(repo_id, pool_reference(everything, pool_id), token, folder=folder, license=license),
        configs=[round_config(r.round) for r in rounds] + [DEFAULT_CONFIG],
        rounds=rounds,
        run_args={"scorer": scorer, "weight_update": weight_update},
    )


def decontamination_markdown(record: dict | None) -> str:
    """The card's decontamination section: what was dropped against what, and the rows dropped (at most 10 shown)."""
    if not record:
        return ""
    lines = [f"Decontaminated: {markdown_cell(decontamination_summary(record))}.", ""]
    if record["removed"]:
        lines += ["| pool row | evaluation item | n-gram share | cosine |", "|---:|---:|---:|---:|"]
        rows = zip(record["removed_indices"], record["matched_items"], record["ngram_overlap"], record["cosine"])
        for row, item, overlap, cosine in list(rows)[:10]:
            lines.append(f"| {row} | {item} | {overlap:.2f} | {'n/a' if cosine is None else f'{cosine:.3f}'} |")
        if record["removed"] > 10:
            lines.append(f"\n{record['removed'] - 10} more in `{MANIFEST_FILE}` (`decontamination`).")
    return "\n".join(lines)


def _size_category(rows: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < bound:
            return name
    return "1M<n<10M"


def restage_dataset_card(folder: str, repo_id: str, token=None) -> bool:
    """Write the dataset card staged in `folder` again for `repo_id`, the repo the push goes to.

    A card staged for a run without a Hub repo loads its rows from the folder; once the push knows
    its repo (`hf-idsel push DIR --repo-id`, or the namespace the Hub gave a bare name) the card
    must name that repo. The card is rendered from what is staged: the manifest, the round files
    and the configs of the push plan.

    Args:
        folder (`str`):
            A folder staged for a push (`hf_idsel_push.json`, `README.md`, the manifests).
        repo_id (`str`):
            The dataset repo the push goes to, `"namespace/name"`.
        token (`str`, *optional*):
            Hub token, to read the pool's card for its license and language.

    Returns:
        `bool`: whether the card was written again; `False` when nothing was staged to render it from
        (no card, or no manifest of all the staged rows), and the staged card is pushed as it is.
    """
    path = os.path.join(folder, CARD_FILE)
    configs = read_plan(folder)["configs"]
    manifests = [os.path.join(folder, MANIFEST_FILE)]
    if len(configs) == 1:  # `push_selection` to a config other than the default
        manifests.append(os.path.join(folder, manifest_path(configs[0])))
    found = [m for m in manifests if os.path.isfile(m)]
    if not os.path.isfile(path) or not found:
        if os.path.isfile(path):
            logger.warning("%s holds no manifest of all its rows: its dataset card is pushed as it was staged.", folder)
        return False
    manifest = Manifest.load(found[0])
    rounds = read_rounds(folder)
    arguments = manifest.arguments or {}
    card = dataset_card(
        manifest,
        card_facts(repo_id, pool_reference(manifest), token, folder=folder, license=read_plan(folder).get("license")),
        configs=configs,
        rounds=rounds,
        run_args={"scorer": arguments.get("scorer"), "weight_update": arguments.get("weight_update")} if rounds else None,
    )
    card.save(path)
    return True


def model_card_facts(
    manifest: Manifest,
    *,
    model_name: str | None,
    base_model: str | None,
    base_local: str | None,
    license: str | None,
    tags: list[str],
    peft: bool,
    rounds: list[RoundRecord],
    run_args: dict,
    hyperparameters: list[tuple[str, object]],
    pool_id: str | None,
    output_dir: str,
    push_command: str,
    evaluation: dict | None = None,
    base_weights: BaseWeights | None = None,
) -> dict:
    """What the model card of an `IterativeSelectionTrainer` run says, as JSON values.

    The trainer saves them beside the model (`MODEL_CARD_FACTS`, left out of every upload by its
    leading `_`), so that `hf-idsel push` can write the card again with the repos it pushed to.

    Args:
        manifest (`Manifest`):
            The manifest of every row selected so far.
        model_name (`str`, *optional*):
            The card's title; default: the model repo's name, or the output folder's.
        base_model (`str`, *optional*):
            Hub id of the base model.
        base_local (`str`, *optional*):
            The local folder the base model was loaded from, when not from the Hub.
        license (`str`, *optional*):
            The model's license.
        tags (`list[str]`):
            Tags of the card besides hf_idsel's own.
        peft (`bool`):
            Whether the saved model is a PEFT adapter.
        rounds (`list[RoundRecord]`):
            The round records.
        run_args (`dict`):
            `quality_column`, `scorer`, `weight_update`, `weight_temperature` and `round_mode`.
        hyperparameters (`list[tuple[str, object]]`):
            The rows of the hyperparameter table ([`training_hyperparameters`]).
        pool_id (`str`, *optional*):
            Hub id of the pool.
        output_dir (`str`):
            The run's output folder.
        push_command (`str`):
            The `hf-idsel push` command that publishes the run.
        evaluation (`dict`, *optional*):
            The latest held-out evaluation ([`evaluation.evaluate_model`]'s result, plus the `round` it
            followed): the card's evaluation table and its `model-index`.
        base_weights ([`provenance.BaseWeights`], *optional*):
            The weights trained ([`provenance.model_base_weights`]): the card names them, `hf-idsel eval` loads an
            adapter on them ([`recorded_base_weights`]).
    """
    versions = library_versions(extra=("trl", "peft", "accelerate"))
    rounds = round_records(rounds)
    return {
        "model_name": model_name,
        "base_model": base_model,
        "base_local": base_local,
        "base_weights": base_weights.to_dict() if base_weights else None,
        "license": license,
        "tags": list(dict.fromkeys(list(tags) + TAGS + ["trl", "sft", "generated_from_trainer", PAPER])),
        "peft": peft,
        "method": manifest.method,
        "budget": _describe_budget(manifest),
        "pool_rows": manifest.pool["num_rows"],
        "pool_id": pool_id,
        "pool_digest": manifest.pool["digest"],
        "encoder": _describe_encoder(manifest),
        "k": manifest.k,
        "k_how": _describe_k(manifest),
        "seed": manifest.seed,
        "rounds": len(rounds),
        "round_rows": ", ".join(str(len(r.selected)) for r in rounds),
        "rounds_table": rounds_markdown(rounds) if rounds else "",
        "decontamination": markdown_cell(decontamination_summary(manifest.decontamination)) if manifest.decontamination else None,
        "target": markdown_cell(target_summary(manifest.target)) if manifest.target else None,
        "cluster_map": bool(manifest.cluster_map),
        **{name: run_args.get(name) for name in ("quality_column", "scorer", "weight_update", "weight_temperature", "round_mode")},
        "hyperparameters": [[name, _json_value(value)] for name, value in hyperparameters],
        "versions": sorted([name, value] for name, value in versions.items()),
        "output_dir": os.path.abspath(output_dir),
        "staging_dir": staging_folder(os.path.abspath(output_dir)),
        "push_command": push_command,
        "evaluation": evaluation,
    }


def trainer_model_card_facts(
    manifest: Manifest,
    args,
    *,
    rounds: list[RoundRecord],
    model,
    base_model: str | None,
    license: str | None,
    tags,
    trainer_tags,
    processes: int,
    budget_rows: int,
    k: int,
    scorer: str,
    global_step: int,
    model_name: str | None = None,
) -> dict:
    """[`model_card_facts`] of an `IterativeSelectionTrainer` run as it stands: its hyperparameters, the command that
    pushes it, and the held-out evaluation after the latest round that ran one.

    Args:
        manifest (`Manifest`):
            The manifest of every row selected so far.
        args ([`IterativeSelectionConfig`]):
            The run's configuration.
        rounds (`list[RoundRecord]`):
            The finished rounds.
        model (`PreTrainedModel` or `PeftModel`):
            The trained model (a PEFT model's adapter settings go into the card).
        base_model (`str`, *optional*):
            Hub id of the base model ([`base_model_id`]).
        license (`str`, *optional*):
            The model's license ([`base_model_license`]).
        tags (`str` or `list[str]`, *optional*):
            Tags the user asked for.
        trainer_tags (`list[str]`):
            The trainer's own tags (TRL's `_tag_names`).
        processes (`int`):
            Processes the run trained on.
        budget_rows (`int`):
            The row budget.
        k (`int`):
            Number of clusters.
        scorer (`str`):
            The scorer's name.
        global_step (`int`):
            Optimizer steps done.
        model_name (`str`, *optional*):
            The card's title; default: the model repo's name, or the output folder's.
    """
    rounds = round_records(rounds)
    tags = [tags] if isinstance(tags, str) else list(tags or [])
    peft_config = getattr(model, "peft_config", None)
    hyperparameters = training_hyperparameters(
        args, processes=processes, budget_rows=budget_rows, k=k, scorer=scorer, global_steps=global_step,
        peft_config=peft_config,
    )
    output_dir = os.path.abspath(args.output_dir)
    push_command = f"hf-idsel push {shlex.quote(output_dir)}"
    if not args.hub_model_id:  # train() stages the model's push only for a named model repo
        push_command += f" --model-repo-id {shlex.quote(os.path.basename(output_dir))}"
    return model_card_facts(
        manifest,
        model_name=model_name,
        base_model=base_model,
        base_local=base_model_folder(model),
        base_weights=model_base_weights(model),
        license=license,
        tags=tags + list(trainer_tags),
        peft=bool(peft_config),
        rounds=rounds,
        run_args={
            "quality_column": args.quality_column, "scorer": scorer, "weight_update": args.weight_update,
            "weight_temperature": args.weight_temperature, "round_mode": args.round_mode,
        },
        hyperparameters=hyperparameters,
        pool_id=args.pool_id,
        output_dir=output_dir,
        push_command=push_command,
        evaluation=next(({**r.eval, "round": r.round} for r in reversed(rounds) if r.eval), None),
    )


# Held-out metrics the card's model-index reports: metric -> (Hub dataset of the benchmark, its name, metric type).
EVAL_INDEX = {
    "gsm8k/exact_match": ("openai/gsm8k", "GSM8K", "exact_match"),
    "mmlu/accuracy": ("cais/mmlu", "MMLU", "accuracy"),
    "humaneval/pass@1": ("openai/openai_humaneval", "HumanEval", "pass@1"),
}


def eval_results(evaluation: dict | None) -> list:
    """huggingface_hub `EvalResult`s of a held-out evaluation (the card's `model-index`): one per benchmark metric."""
    from huggingface_hub import EvalResult

    if not evaluation:
        return []
    results = []
    for name, value in evaluation["metrics"].items():
        if name not in EVAL_INDEX:
            continue  # gold_logprob has no benchmark metric to file it under
        dataset, pretty, metric = EVAL_INDEX[name]
        task = name.split("/")[0]
        results.append(EvalResult(
            task_type="text-generation", dataset_type=dataset, dataset_split="test", metric_type=metric, metric_value=value,
            dataset_name=f"{pretty} ({len(evaluation['items'][task])} held-out test rows)",
        ))
    return results


def _json_value(value):
    value = getattr(value, "value", value)  # enums of TrainingArguments
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def model_card(facts: dict, folder: str, *, hub_model_id: str | None = None, dataset_id: str | None = None):
    """The model card of a model trained by `IterativeSelectionTrainer`, rendered from `model_cards/model_card.md`.

    Args:
        facts (`dict`):
            What the card says about the run ([`model_card_facts`]).
        folder (`str`):
            The folder the card is saved in, beside the weights.
        hub_model_id (`str`, *optional*):
            The model repo the folder is pushed to: the card loads from it. Default: the folder.
        dataset_id (`str`, *optional*):
            The dataset repo the selection was pushed to. Without it the card links no Hub repo and
            says how to push the run.
    """
    from huggingface_hub import ModelCard, ModelCardData

    name = facts["model_name"] or (hub_model_id.split("/")[-1] if hub_model_id else os.path.basename(facts["output_dir"]))
    if hub_model_id:  # the card goes to the Hub: local folders by their names only
        facts = {**facts, "base_local": facts.get("base_local") and os.path.basename(facts["base_local"])}
        if is_local_path(facts.get("pool_id")):
            facts["pool_id"] = os.path.basename(facts["pool_id"])
    weights = BaseWeights.from_dict(facts.get("base_weights"))  # facts saved before it was recorded lack it
    weights = weights and (weights.published() if hub_model_id else weights)
    evaluation = facts.get("evaluation")  # facts saved before evaluations existed lack it
    data = ModelCardData(
        base_model=facts["base_model"],
        # The Hub shows an adapter under its base model's adapters, not its fine-tunes.
        base_model_relation="adapter" if facts["peft"] and facts["base_model"] else None,
        datasets=[dataset_id] if dataset_id else None,
        license=facts["license"],
        library_name="peft" if facts["peft"] else "transformers",
        model_name=name,
        tags=list(facts["tags"]),
        eval_results=eval_results(evaluation) or None,
    )
    eval_rows = [
        (name_.split("/")[0], name_.split("/")[1], f"{value:.4f}", len(evaluation["items"][name_.split("/")[0]]))
        for name_, value in (evaluation or {}).get("metrics", {}).items()
    ]
    return ModelCard.from_template(
        data,
        template_path=template_path("model_card.md"),
        **{**facts, "model_name": name, "evaluation": bool(evaluation), "base_weights": weights and weights.describe(),
           "packaged_base": bool(weights and weights.kind == "packaged-gguf" and facts["peft"])},
        eval_rows=eval_rows,
        eval_round=(evaluation or {}).get("round"),
        dataset_id=dataset_id,
        load_path=hub_model_id or os.path.abspath(folder),
        weights_saved=any(os.path.isfile(os.path.join(folder, file)) for file in MODEL_FILES),
    )


def save_model_card(
    facts: dict, folder: str, *, hub_model_id: str | None = None, dataset_id: str | None = None, keep_facts: bool = False
) -> str:
    """Write [`model_card`] to `folder/README.md` (and `facts` to `folder/MODEL_CARD_FACTS` with `keep_facts`)."""
    path = os.path.join(folder, CARD_FILE)
    model_card(facts, folder, hub_model_id=hub_model_id, dataset_id=dataset_id).save(path)
    if keep_facts:
        with open(os.path.join(folder, MODEL_CARD_FACTS), "w", encoding="utf-8") as f:
            json.dump(facts, f, indent=2)
    return path


def refresh_model_card(folder: str, hub_model_id: str, dataset_id: str | None) -> bool:
    """Write the model card in `folder` again for the repos a push sends it to.

    Returns:
        `bool`: `False` when `folder` holds no `MODEL_CARD_FACTS` (not an `IterativeSelectionTrainer`
        output folder): its README is pushed as it is.
    """
    path = os.path.join(folder, MODEL_CARD_FACTS)
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        facts = json.load(f)
    save_model_card(facts, folder, hub_model_id=hub_model_id, dataset_id=dataset_id)
    return True


def read_model_card_facts(folder: str) -> dict:
    """The facts an `IterativeSelectionTrainer` run saved beside its model card, checked before they are trusted.

    Raises:
        [`InvalidArgumentError`]: `folder` holds no `MODEL_CARD_FACTS` (not a trainer output folder), or one that is
            not what [`model_card_facts`] writes.
    """
    path = os.path.join(folder, MODEL_CARD_FACTS)
    if not os.path.isfile(path):
        raise InvalidArgumentError(
            f"{folder!r} holds no {MODEL_CARD_FACTS}: it is not an IterativeSelectionTrainer output_dir whose model card "
            "hf_idsel wrote (run `trainer.train()` with `output_dir` there first)."
        )
    try:
        with open(path, encoding="utf-8") as f:
            facts = json.load(f)
    except ValueError as err:
        raise InvalidArgumentError(f"{path}: not readable JSON ({err}).") from None
    required = {"model_name", "base_model", "license", "tags", "peft", "rounds", "hyperparameters", "versions", "output_dir"}
    if not isinstance(facts, dict) or not required <= set(facts) or type(facts["rounds"]) is not int:
        found = sorted(facts) if isinstance(facts, dict) else type(facts).__name__
        raise InvalidArgumentError(f"{path} is not a model card's facts (fields {found}); write it again with the trainer.")
    return facts


def recorded_base_weights(folder: str) -> BaseWeights | None:
    """The weights the model saved in `folder` (or in the run folder above a `checkpoint-<step>` folder) was trained
    from, as its run recorded them in its model card facts; `None` where nothing recorded them."""
    for where in (folder, os.path.dirname(os.path.abspath(folder))):
        if os.path.isfile(os.path.join(where, MODEL_CARD_FACTS)):
            return BaseWeights.from_dict(read_model_card_facts(where).get("base_weights"))
    return None


def add_evaluation_to_model_card(folder: str, evaluation: dict) -> str:
    """Write `evaluation` (an [`evaluation.evaluate_model`] result) into the model card of a trainer's output folder:
    its evaluation table and its `model-index`, read back to check them.

    The card keeps the repos it names: those of the run's staged push once the model was pushed. A pushed run's
    model upload is queued again, so that `hf-idsel push FOLDER` sends the new card.

    Args:
        folder (`str`):
            The trainer's `output_dir` (it holds `README.md` and `MODEL_CARD_FACTS`).
        evaluation (`dict`):
            `metrics` (`"<task>/<metric>"` -> float) and `items` (`task` -> items evaluated).

    Returns:
        `str`: the path of the card.
    """
    from huggingface_hub import ModelCard

    facts = read_model_card_facts(folder)
    # The evaluated model is the saved one, trained through every finished round.
    facts["evaluation"] = {"metrics": evaluation["metrics"], "items": evaluation["items"], "round": facts["rounds"]}
    staged = staging_folder(folder)
    plan = read_plan(staged) if is_staged(staged) else {}
    pushed = "model" in plan.get("done", [])
    hub_model_id = plan["model"]["repo_id"] if pushed else None
    path = save_model_card(
        facts, folder, hub_model_id=hub_model_id, dataset_id=plan["repo_id"] if pushed else None, keep_facts=True
    )
    card = ModelCard.load(path)
    written = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results or []}
    expected = {(r.dataset_type, r.metric_type): r.metric_value for r in eval_results(facts["evaluation"])}
    if written != expected or (evaluation["metrics"] and "## Evaluation" not in card.text):
        raise InvalidArgumentError(f"{path} did not read back with the evaluation written into it: {written} != {expected}.")
    if pushed:
        queue_model_upload(staged)
    return path


def base_model_id(model) -> str | None:
    """The Hub id a model was loaded from (`None` for a local folder or a model built in memory)."""
    name = model_name_or_path(model)
    return name if name and not os.path.isdir(name) else None


def base_model_folder(model) -> str | None:
    """The local folder a model was loaded from (`None` for a Hub id or a model built in memory)."""
    name = model_name_or_path(model)
    return os.path.abspath(name) if name and os.path.isdir(name) else None


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
