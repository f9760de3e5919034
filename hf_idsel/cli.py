"""The `hf-idsel` command line: `hf-idsel select POOL --budget N --out DIR`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .errors import IdselError, InvalidArgumentError

logger = logging.getLogger(__name__)

BUILTIN_POOL = "builtin"
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow", ".txt": "text"}


def load_pool(source: str, *, split: str = "train", config: str | None = None, revision: str | None = None):
    """Load the pool named on the command line: `builtin`, a local file or folder, or a Hub dataset id."""
    import datasets

    if source == BUILTIN_POOL:
        from .pool import load_builtin_pool

        return load_builtin_pool()
    if os.path.isfile(source):
        ext = os.path.splitext(source)[1].lower()
        if ext not in _FILE_BUILDERS:
            raise InvalidArgumentError(
                f"POOL {source!r}: unsupported file type {ext!r}; use one of {sorted(_FILE_BUILDERS)}."
            )
        return datasets.load_dataset(_FILE_BUILDERS[ext], data_files=source, split="train")
    if os.path.isdir(source):
        if os.path.exists(os.path.join(source, "dataset_info.json")) or os.path.exists(os.path.join(source, "state.json")):
            loaded = datasets.load_from_disk(source)
        else:
            loaded = datasets.load_dataset(source, config, revision=revision)
    else:
        loaded = datasets.load_dataset(source, config, revision=revision)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise InvalidArgumentError(f"POOL {source!r} has splits {list(loaded)}; pick one with --split.")
        return loaded[split]
    return loaded


def format_report(manifest, *, top: int = 20) -> str:
    """A short human-readable report of a selection: sizes, k, and rows chosen per cluster."""
    sizes = manifest.cluster_sizes
    chosen = manifest.selected_per_cluster
    total = sum(sizes)
    budget = manifest.budget
    lines = [
        f"hf_idsel selection: {len(manifest.selected_indices)} of {manifest.pool['num_rows']} rows, method={manifest.method}, "
        f"k={manifest.k}, seed={manifest.seed}",
    ]
    if budget.get("max_tokens"):
        lines.append(f"token budget: {budget['tokens']} of {budget['max_tokens']} tokens ({budget['tokenizer']})")
    encoder = manifest.encoder or {}
    if "id" in encoder:
        lines.append(f"encoder: {encoder['id']} @ {encoder['revision']} (dim {encoder['dim']})")
    else:
        lines.append(f"embeddings: column {encoder.get('embedding_column')!r} (dim {encoder.get('dim')})")
    if manifest.k_selection.get("mode") == "auto":
        scores = manifest.k_selection["silhouette"]
        lines.append("k chosen by silhouette: " + ", ".join(f"k={c}: {float(s):.3f}" for c, s in scores.items()))
    if manifest.dedup:
        lines.append(f"de-duplication: removed {manifest.dedup['removed']} rows at cosine >= {manifest.dedup['threshold']}")
    lines.append("")
    lines.append(f"{'cluster':>7} {'pool rows':>9} {'pool %':>7} {'chosen':>6} {'chosen %':>8}")
    picked = max(sum(chosen), 1)
    order = sorted(range(len(sizes)), key=lambda j: (-sizes[j], j))
    for j in order[:top]:
        lines.append(
            f"{j:>7} {sizes[j]:>9} {100 * sizes[j] / total:>6.1f}% {chosen[j]:>6} {100 * chosen[j] / picked:>7.1f}%"
        )
    if len(order) > top:
        rest_sizes = sum(sizes[j] for j in order[top:])
        rest_chosen = sum(chosen[j] for j in order[top:])
        lines.append(f"{'others':>7} {rest_sizes:>9} {100 * rest_sizes / total:>6.1f}% {rest_chosen:>6} {100 * rest_chosen / picked:>7.1f}%")
    return "\n".join(lines)


def _budget(value: str):
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is neither a row count nor a fraction") from None


def _k(value: str):
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"k must be an int or 'auto', got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from .sample import METHODS

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
    s.add_argument("pool", help="'builtin' (the packaged real pool), a local file/folder, or a Hub dataset id.")
    group = s.add_mutually_exclusive_group(required=True)
    group.add_argument("--budget", type=_budget, help="Rows to select (int) or a fraction of the pool (float in (0, 1]).")
    group.add_argument("--max-tokens", type=int, help="Token budget instead of rows (needs --tokenizer).")
    s.add_argument("--out", required=True, help="Output folder (created).")
    s.add_argument("--method", default="kmq", choices=METHODS, help="Selection method (default: kmq).")
    s.add_argument("--k", type=_k, default="auto", help="Number of clusters, or 'auto' (silhouette; default).")
    s.add_argument("--seed", type=int, default=0, help="Random seed (default: 0).")
    s.add_argument("--split", default="train", help="Split of POOL to select from (default: train).")
    s.add_argument("--config", default=None, help="Dataset config name of a Hub POOL.")
    s.add_argument("--revision", default=None, help="Dataset revision of a Hub POOL.")
    s.add_argument("--encoder", default=None, help="Sentence-transformers model id or path (default: all-MiniLM-L6-v2).")
    s.add_argument("--embedding-column", default=None, help="Use precomputed vectors from this column.")
    s.add_argument("--quality-column", default=None, help="Per-row quality used by kmq/deita/qdit.")
    s.add_argument("--temperature", type=float, default=1.0, help="Softmax temperature of the quality draw.")
    s.add_argument("--quota", default="proportional", choices=["proportional", "equal"], help="Cluster quota rule.")
    s.add_argument("--text-column", default=None, help="Column to embed for plain-text pools.")
    s.add_argument("--template", default=None, help="A str.format template over the columns.")
    s.add_argument("--prompt-only", action="store_true", help="Embed the prompt only (the research code).")
    s.add_argument("--dedup-threshold", type=float, default=None, help="Drop near-duplicates above this cosine.")
    s.add_argument("--tokenizer", default=None, help="Tokenizer id/path for --max-tokens.")
    s.add_argument("--device", default=None, help="Encoder device (default: GPU when available).")
    s.add_argument("--dry-run", action="store_true", help="Print the plan and estimated cost, compute nothing.")
    return parser


def _run_select(args) -> int:
    pool = load_pool(args.pool, split=args.split, config=args.config, revision=args.revision)
    kwargs = dict(
        method=args.method,
        k=args.k,
        seed=args.seed,
        quality_column=args.quality_column,
        temperature=args.temperature,
        quota=args.quota,
        embedding_column=args.embedding_column,
        text_column=args.text_column,
        template=args.template,
        include_answer=not args.prompt_only,
        dedup_threshold=args.dedup_threshold,
        device=args.device,
    )
    if args.encoder:
        kwargs["encoder"] = args.encoder
    if args.max_tokens is not None:
        if not args.tokenizer:
            raise InvalidArgumentError("--max-tokens needs --tokenizer (the tokenizer you will train with).")
        from transformers import AutoTokenizer

        kwargs.update(max_tokens=args.max_tokens, tokenizer=AutoTokenizer.from_pretrained(args.tokenizer))
    from .select import diverse_select

    if args.dry_run:
        print(diverse_select(pool, args.budget, dry_run=True, **kwargs))
        return 0
    subset, manifest = diverse_select(pool, args.budget, return_manifest=True, **kwargs)
    os.makedirs(args.out, exist_ok=True)
    subset.to_parquet(os.path.join(args.out, "subset.parquet"))
    manifest.save(os.path.join(args.out, "manifest.json"))
    report = format_report(manifest)
    with open(os.path.join(args.out, "report.md"), "w", encoding="utf-8") as f:
        f.write("```\n" + report + "\n```\n")
    print(report)
    print(f"\nWrote {len(subset)} rows to {os.path.join(args.out, 'subset.parquet')}, manifest.json and report.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "select":
            return _run_select(args)
    except IdselError as err:
        print(f"hf-idsel {args.command}: error: {err}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
