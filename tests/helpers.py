"""Helpers shared by the tests, the ddp_*_run.py scripts they launch, scripts/selection_digests.py and bench/.

Test files import from here, never from each other (nor from conftest.py, which holds the fixtures):

- vectors: `unit_rows`, `planted_blobs`;
- tiny random causal LMs (a byte-level BPE tokenizer trained on the fly and a 2-layer Llama; both build in well
  under a second on CPU, nothing touches the Hub): `make_tiny_tokenizer`, `tiny_config`, `make_tiny_llama`,
  `save_tiny_llama`, `train_tiny`, `tiny_reward_model`, `single_thread`;
- pools: `make_pool` (4 chat topics, one with planted junk answers, with 8-d embeddings), `qa_pool`
  (question/answer rows), `prompt_pool` (prompt/completion rows, more than two embedding chunks);
- the iterative trainer on a tiny Llama: `make_trainer`, `junk_judge`;
- cards: `assert_truthful`;
- property tests: `examples` (an example count scaled by the active hypothesis profile).

torch, transformers, hypothesis and the trainer are imported by the functions that use them: conftest.py imports
this module, and a run of one fast test file should not pay for their import (about 15 s).
"""

from __future__ import annotations

import contextlib
import os
import re

import datasets
import numpy as np


# ---- vectors ----


def unit_rows(x: np.ndarray) -> np.ndarray:
    """The rows of `x` scaled to unit length, as float32."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted_blobs(n_clusters: int, per_cluster: int, dim: int = 16, *, spread: float = 0.05, seed: int = 0):
    """Well-separated unit-vector blobs: returns (embeddings, true labels)."""
    rng = np.random.default_rng(seed)
    centers = unit_rows(rng.normal(size=(n_clusters, dim)))
    labels = np.repeat(np.arange(n_clusters), per_cluster)
    points = centers[labels] + spread * rng.normal(size=(len(labels), dim))
    return unit_rows(points), labels


# ---- tiny random causal LMs ----

BOS, EOS, PAD = "<s>", "</s>", "<pad>"

# A role line per turn, wrapped in BOS/EOS; the generation prompt opens the assistant's turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}<s>{{ message['role'] }}\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)

CORPUS = [
    "The sky is blue and the grass is green.",
    "What colour is the sky? The sky is blue.",
    "What colour is the grass? The grass is green.",
    "What colour is snow? Snow is white.",
    "What colour is coal? Coal is black.",
    "What colour is a banana? A banana is yellow.",
    "What colour is a tomato? A tomato is red.",
    "What colour is an orange? An orange is orange.",
    "What colour is a plum? A plum is purple.",
    "Question: what is two plus two? Answer: four.",
    "Write a short poem about the sea and the wind.",
    "Translate the sentence into French, please.",
    "Summarise the following paragraph in one line.",
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i)\n",
    "The quick brown fox jumps over the lazy dog.",
    "Instruction: list three fruits. Response: apple, pear, plum.",
    "Hello! How are you today? I am fine, thank you.",
    "user\nassistant\nsystem\n",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000.",
]


def make_tiny_tokenizer(vocab_size: int = 400):
    """Byte-level BPE tokenizer with `<s>`, `</s>`, `<pad>`; adds `<s>` in front like Llama's.

    Returns:
        `PreTrainedTokenizerFast`
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS * 4, trainer=trainer)
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(tokenizer, **overrides):
    """A 2-layer, 32-wide `LlamaConfig` over `tokenizer`'s vocabulary."""
    from transformers import LlamaConfig

    values = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def make_tiny_llama(path: str | os.PathLike | None = None, *, seed: int = 0):
    """A seeded 2-layer Llama (hidden 32) and its tokenizer; saved to `path` when given.

    Returns:
        `tuple[LlamaForCausalLM, PreTrainedTokenizerFast]`
    """
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = make_tiny_tokenizer()
    config = tiny_config(tokenizer)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.eval()
    if path is not None:
        save_tiny_llama(model, tokenizer, path)
    return model, tokenizer


def save_tiny_llama(model, tokenizer, path: str | os.PathLike) -> str:
    """Save `model` and `tokenizer` into the folder `path` (created); return it as a string."""
    path = str(path)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def train_tiny(model, tokenizer, texts: list[str], *, steps: int = 60, lr: float = 1e-2, seed: int = 0):
    """Plain AdamW language-model training on `texts` (full batch, CPU); returns the model in eval mode."""
    import torch

    torch.manual_seed(seed)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model


@contextlib.contextmanager
def single_thread():
    """Run torch on one CPU thread: a tiny model gains nothing from more, and on a busy 2-core
    machine two OpenMP threads spin against other processes (measured: 0.25 s vs 28 s for 20
    training steps)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tiny_reward_model(tokenizer, *, num_labels: int = 1, pad: bool = True, seed: int = 0):
    """A tiny random LlamaForSequenceClassification sharing the tiny tokenizer's vocabulary."""
    import torch
    from transformers import LlamaForSequenceClassification

    config = tiny_config(tokenizer, num_labels=num_labels, pad_token_id=tokenizer.pad_token_id if pad else None)
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(config).eval()


# ---- pools ----

JUNK = "Click here to subscribe! Accept cookies. Copyright 2024 all rights reserved. Sign up for our newsletter."
TOPICS = {
    0: ("What colour is {w}?", "The {w} is blue."),
    1: ("What is {i} plus {i}?", "It is {j}."),
    2: ("Say hello to {w}.", "Hello, {w}! How are you?"),
    3: ("Tell me about {w}.", JUNK),  # planted junk: scraped boilerplate as the gold answer
}
WORDS = ["sky", "sea", "coal", "snow", "plum", "fox", "dog", "tree", "rain", "sun", "moon", "star"]


def make_pool(per_cluster: int = 24) -> datasets.Dataset:
    """`messages` rows of the 4 `TOPICS` (topic 3's answers are junk), `per_cluster` each, with a `topic` column and an
    8-d unit `embedding` around one center per topic."""
    rng = np.random.default_rng(0)
    centers = unit_rows(rng.normal(size=(4, 8)))
    rows = []
    for c, (question, answer) in TOPICS.items():
        for i in range(per_cluster):
            w = WORDS[i % len(WORDS)]
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": question.format(w=w, i=i)},
                        {"role": "assistant", "content": answer.format(w=w, j=2 * i)},
                    ],
                    "topic": c,
                    "embedding": unit_rows(centers[c : c + 1] + 0.05 * rng.normal(size=(1, 8)))[0].tolist(),
                }
            )
    return datasets.Dataset.from_list(rows)


def qa_pool(n: int = 40) -> datasets.Dataset:
    """`n` rows of `question`/`answer` on 4 topics, with a `source` column and answers of varied length."""
    topics = ["colour of the sky", "two plus two", "a poem about the sea", "print numbers in python"]
    return datasets.Dataset.from_dict(
        {
            "question": [f"Question {i}: tell me about the {topics[i % 4]}?" + " more" * (i % 7) for i in range(n)],
            "answer": [f"Answer {i}: the {topics[i % 4]} is fine." for i in range(n)],
            "source": [["math", "chat", "code"][i % 3] for i in range(n)],
        }
    )


PROMPT_TEMPLATES = [
    "Translate sentence {i} into French.",
    "What is {i} times {j}?",
    "Write a haiku about the number {i}.",
    "Name a country whose capital starts with letter {c}.",
    "Fix the bug in line {i} of my Python script.",
]


def prompt_pool(n: int = 1100) -> datasets.Dataset:
    """`prompt`/`completion` rows; by default more rows than two embedding chunks (1024 rows each), so both ranks of a
    2-process run embed a share."""
    rows = []
    for i in range(n):
        t = PROMPT_TEMPLATES[i % len(PROMPT_TEMPLATES)]
        rows.append({"prompt": t.format(i=i, j=i % 7, c=chr(65 + i % 26)), "completion": f"Answer {i}."})
    return datasets.Dataset.from_list(rows)


# ---- the iterative trainer on a tiny Llama ----


def junk_judge(prompts, completions):
    """A judge that rates the planted junk answers -5 and every other answer 1."""
    return [-5.0 if "subscribe" in c or "cookies" in c else 1.0 for c in completions]


def make_trainer(tmp_path, pool=None, model=None, **config):
    """An `IterativeSelectionTrainer` on a tiny Llama and `make_pool()` (or `pool`): 48 rows in 3 rounds of k=4, the
    free loss scorer, CPU, no checkpoints. `config` overrides `IterativeSelectionConfig` fields; the trainer's own
    arguments (`peft_config`, `exclude_*`, a scorer object or callable) go to the trainer."""
    from hf_idsel.trainer import IterativeSelectionConfig, IterativeSelectionTrainer

    model_tok = make_tiny_llama()
    defaults = dict(
        output_dir=str(tmp_path / "run"),
        budget=48,
        rounds=3,
        k="4",
        embedding_column="embedding",
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        max_length=64,
        report_to="none",
        bf16=False,
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        scored_rows_per_cluster=4,
        generation_max_new_tokens=8,
        seed=0,
        disable_tqdm=True,
        scorer="loss",  # the default, named: these tests do not change when the default does
    )
    defaults.update(config)
    trainer_only = (
        "peft_config", "exclude_dataset", "exclude_ngram", "exclude_ngram_threshold", "exclude_cosine_threshold", "target_dataset",
    )
    extra = {k: defaults.pop(k) for k in trainer_only if k in defaults}
    if not isinstance(defaults.get("scorer", "loss"), str):  # a scorer object or a callable goes to the trainer
        extra["scorer"] = defaults.pop("scorer")
    args = IterativeSelectionConfig(**defaults)
    return IterativeSelectionTrainer(
        model or model_tok[0], args=args, train_dataset=pool if pool is not None else make_pool(), processing_class=model_tok[1], **extra
    )


# ---- cards ----

PAPER_URL = "https://arxiv.org/abs/2409.11378"
PLACEHOLDERS = ("More Information Needed", "Model ID", "TODO", "{{", "}}")
URL = re.compile(r"https?://[^\s)\]>\"'`]+")


def assert_truthful(text: str, repos=()):
    """No placeholder text, and no URL but the paper, the Hub docs and the Hub pages of `repos`."""
    # TRL's own bibtex entry (model cards) doubles braces and wraps its URL in \url{}: checked as written elsewhere.
    text = re.sub(r"@misc\{vonwerra2022trl,.*?\n\}", "", text, flags=re.S)
    for placeholder in PLACEHOLDERS:
        assert placeholder not in text, placeholder
    allowed = {PAPER_URL} | {f"https://huggingface.co/{r}" for r in repos} | {f"https://huggingface.co/datasets/{r}" for r in repos}
    allowed |= {f"https://huggingface.co/datasets/{r}/resolve/main/cluster_map.png" for r in repos}  # the model card's map
    unreal = [u for u in URL.findall(text) if u not in allowed and not u.startswith("https://huggingface.co/docs/")]
    assert not unreal, unreal


# ---- property tests ----


def examples(n: int) -> int:
    """`max_examples` for a property test that runs `n` examples under a profile of 100 (hypothesis' default and the
    `ci` profile of conftest.py), scaled with the active profile's `max_examples`: 10 times as many under
    `HYPOTHESIS_PROFILE=long`. Pass it as `@settings(max_examples=examples(n))`."""
    from hypothesis import settings

    return max(1, n * settings().max_examples // 100)


def read_rounds(output_dir):
    """The round files a trainer wrote under `output_dir/selection`, as dicts, in round order."""
    import glob
    import json
    import os

    files = sorted(glob.glob(os.path.join(output_dir, "selection", "round_*.json")))
    return [json.load(open(f)) for f in files]


def code_blocks(text: str, heading: str) -> str:
    """The python code under `## heading` of a card."""
    import re

    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))


def assert_warned_at(warning, filename: str, lineno: int | None = None) -> None:
    """A warning points at the caller's file (and line): the library's `stacklevel` is right. Not checked under mutmut
    (scripts/mutation_test.py), whose trampoline adds a frame between every caller and the mutated module."""
    if "MUTANT_UNDER_TEST" in os.environ:
        return
    assert warning.filename == filename, (warning.filename, filename)
    if lineno is not None:
        assert warning.lineno == lineno, (warning.lineno, lineno)
