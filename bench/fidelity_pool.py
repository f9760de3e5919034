"""Fidelity experiment, the setting: its configuration, the pool with planted junk, the held-out items and
the accounting of a selection (junk share, coverage, how junk gathers in clusters).

Part of bench/fidelity.py (docs/fidelity.md): `fidelity_pool` (this file: setting and pool),
`fidelity_arms` (arms and their selections), `fidelity_train` (training and evaluation),
`fidelity_stats` (statistics and provenance), `fidelity_report` (tables and plots).
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field

import datasets
import numpy as np

logger = logging.getLogger("fidelity")

DOMAINS = ("gsm8k", "humaneval", "chitchat", "mmlu")
JUNK_KINDS = ("offtopic", "corrupted")
# The primary metric's domains: held-out answer loss on the generative domains. MMLU's loss is one
# answer-letter token per item (a choice among four, not an answer to write); it is reported beside
# the primary metric (docs/fidelity.md, "Pre-registration").
PRIMARY_DOMAINS = ("gsm8k", "humaneval", "chitchat")
PRIMARY_METRIC = "loss_answer"
# Usable rows of each built-in source (hf_idsel.pool).
SOURCE_ROWS = {"gsm8k": 1319, "humaneval": 164, "chitchat": 4017, "mmlu": 14042}
MMLU_PATTERN = re.compile(
    r"\nA\. (?P<A>.*)\nB\. (?P<B>.*)\nC\. (?P<C>.*)\nD\. (?P<D>.*)\n\nAnswer with the letter of the correct option\.$", re.S
)
LETTERS = "ABCD"
# An MMLU gold answer is "The answer is X. <option>": the template words are the context of the
# scored text, and only the answer letter (" X") is scored.
MMLU_TEMPLATE = "The answer is"


@dataclass
class FidelityConfig:
    """Every knob of the experiment; `scaled()` applies `--scale`."""

    scale: float = 1.0
    seeds: int = 6
    arms: tuple | None = None  # None: the default arm set (fidelity_arms.default_arms())
    model: str = "smollm2"  # "smollm2" (packaged GGUF) or "tiny" (random 2-layer llama, for tests)
    pool_seed: int = 0
    # Sized for a 2-core CPU (the arithmetic is in docs/fidelity.md, "Pre-registration"), with the shape of
    # the paper's setting: a budget under 10% of the pool, several rows per cluster, 3 rounds.
    pool_rows: dict = field(default_factory=lambda: {"gsm8k": 120, "humaneval": 80, "chitchat": 120, "mmlu": 120})
    junk_rows: dict = field(default_factory=lambda: {"offtopic": 45, "corrupted": 45})
    heldout_rows: dict = field(default_factory=lambda: {"gsm8k": 20, "humaneval": 10, "chitchat": 20, "mmlu": 30})
    min_heldout_items: int = 80
    budget: int = 24
    rounds: int = 3
    batch_size: int = 4
    max_length: int = 224
    eval_max_length: int = 512
    min_answer_tokens: int = 32
    k: int | str = "auto"
    learning_rate: float = 5e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: tuple = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    quality_temperature: float = 1.0
    weight_temperature: float = 1.0
    scored_rows_per_cluster: int = 2
    generation_max_new_tokens: int = 32
    eval_batch_size: int = 8
    # The selection-only part: seeds 0 .. selection_seeds - 1, no training (0 skips it).
    selection_seeds: int = 200
    # The placebo's cluster-score spread; None: the default arm's, per seed and round (fidelity_arms.matched_scale).
    placebo_scale: float | None = None
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
# (HumanEval caps at its 164 rows); k stays "auto" (the library's rule, which sees the larger budget).
GPU_SCALED = {"scale": 8.0, "eval_batch_size": 32, "device": "cuda"}


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
        carry `letter`, the gold answer's letter, and `gold`, its index in "ABCD").
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
                letter = mmlu_letter(messages[0]["content"], item["answer"])
                if letter is None:
                    continue
                item.update(letter=letter, gold=LETTERS.index(letter))
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


def mmlu_letter(question: str, answer: str) -> str | None:
    """The gold letter of an MMLU row whose answer is "The answer is X. <option X>" (None for any other form)."""
    match = MMLU_PATTERN.search(question)
    if match is None:
        return None
    for letter in LETTERS:
        if answer == f"{MMLU_TEMPLATE} {letter}. {match.group(letter).strip()}":
            return letter
    return None


def scored_pairs(heldout: dict, render) -> list[tuple[str, str, str]]:
    """`(domain, context, scored text)` of every held-out item: only the scored text's tokens count.

    GSM8K, HumanEval and chit-chat score their whole gold answer after the rendered prompt. MMLU scores
    the answer letter alone: its context is the rendered prompt followed by the template words
    "The answer is", and its scored text is " X"; the "." and the option text after the letter are not
    scored either (they copy the question). `render(messages)` renders a prompt with the generation
    prompt open.
    """
    pairs = []
    for domain in DOMAINS:
        for item in heldout.get(domain, ()):
            prompt = render(item["prompt"])
            if domain == "mmlu":
                pairs.append((domain, prompt + MMLU_TEMPLATE, " " + item["letter"]))
            else:
                pairs.append((domain, prompt, item["answer"]))
    return pairs


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
