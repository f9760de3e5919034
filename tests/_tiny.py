"""Tiny random causal LMs for fast tests: a byte-level BPE tokenizer trained on the fly and a
2-layer Llama. Building both takes well under a second on CPU; nothing touches the Hub."""

from __future__ import annotations

import contextlib
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast


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


def make_tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Byte-level BPE tokenizer with `<s>`, `</s>`, `<pad>`; adds `<s>` in front like Llama's."""
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


def tiny_config(tokenizer, **overrides) -> LlamaConfig:
    """A 2-layer, 32-wide Llama config over `tokenizer`'s vocabulary."""
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
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tiny_reward_model(tokenizer, *, num_labels: int = 1, pad: bool = True, seed: int = 0):
    """A tiny random LlamaForSequenceClassification sharing the tiny tokenizer's vocabulary."""
    config = tiny_config(tokenizer, num_labels=num_labels, pad_token_id=tokenizer.pad_token_id if pad else None)
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(config).eval()
