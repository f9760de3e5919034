"""Fidelity experiment, training and evaluation: the base model, LoRA training of a static subset (trl's
SFTTrainer) or of an iterative run (IterativeSelectionTrainer), and the held-out answer losses.

Part of bench/fidelity.py (docs/fidelity.md).
"""

from __future__ import annotations

import copy
import os
import sys

import datasets
import numpy as np
import torch

from fidelity_pool import DOMAINS, LETTERS, MMLU_TEMPLATE, PRIMARY_DOMAINS, FidelityConfig, scored_pairs


def resolve_device(cfg: FidelityConfig) -> str:
    if cfg.device != "auto":
        return cfg.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_base(cfg: FidelityConfig):
    """`(model, tokenizer)` of the base model, float, in eval mode, on the experiment's device."""
    if cfg.model == "tiny":
        tests = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")
        if tests not in sys.path:
            sys.path.insert(0, tests)
        from helpers import make_tiny_llama

        model, tokenizer = make_tiny_llama()
    else:
        from hf_idsel.quality import load_reference_model, unquantized

        model, tokenizer, _, _ = load_reference_model("HuggingFaceTB/SmolLM2-135M-Instruct", device="cpu", dtype=torch.float32)
        model = unquantized(model)
    return model.to(resolve_device(cfg)).eval(), tokenizer


# --------------------------------------------------------------------------------------------
# Evaluation: held-out answer loss on the answer's own tokens
# --------------------------------------------------------------------------------------------


def render_prompt(tokenizer, messages) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def check_letter_tokens(tokenizer) -> None:
    """Refuse a tokenizer for which " X" scored after "The answer is" is not how training sees the letter.

    Training tokenizes "The answer is X. <option>" in one piece; evaluation tokenizes the context and
    " X" separately (`answer_log_likelihood`). The letter's tokens must be the same in both.
    """
    for letter in LETTERS:
        joint = tokenizer(f"{MMLU_TEMPLATE} {letter}. option", add_special_tokens=False)["input_ids"]
        context = tokenizer(MMLU_TEMPLATE, add_special_tokens=False)["input_ids"]
        scored = tokenizer(" " + letter, add_special_tokens=False)["input_ids"]
        if joint[: len(context) + len(scored)] != context + scored:
            raise ValueError(
                f"the tokenizer splits {MMLU_TEMPLATE!r} + ' {letter}' differently alone and in an answer: the MMLU "
                "letter scored would not be the token trained on"
            )


@torch.no_grad()
def letter_log_likelihoods(model, tokenizer, contexts: list[str], letters=LETTERS, *, max_length: int = 512,
                           batch_size: int = 8) -> np.ndarray:
    """Summed log-probability of each letter's tokens (" X") after each context: shape `(len(contexts), len(letters))`.

    When every letter is one token (SmolLM2's " A" ... " D"), one forward pass over each context gives all of
    them: the next-token log-probabilities at its last position, the context tokenized as
    `answer_log_likelihood` tokenizes prompts (special tokens added, a doubled BOS kept once, the oldest
    tokens dropped past `max_length`, BOS kept). Otherwise each (context, letter) pair is scored by
    `answer_log_likelihood` (its per-token mean times the letter's token count).
    """
    from hf_idsel.quality import answer_log_likelihood, pad_batch

    letter_ids = [tokenizer(" " + x, add_special_tokens=False)["input_ids"] for x in letters]
    if not contexts:
        return np.zeros((0, len(letters)))
    if any(len(ids) != 1 for ids in letter_ids):
        pairs = [(c, " " + x) for c in contexts for x in letters]
        ll = answer_log_likelihood(model, tokenizer, [c for c, _ in pairs], [x for _, x in pairs], batch_size=batch_size,
                                   max_length=max_length, show_progress=False)
        counts = np.asarray([len(ids) for ids in letter_ids] * len(contexts), dtype=np.float64)
        return (ll * counts).reshape(len(contexts), len(letters))
    bos = tokenizer.bos_token_id
    encoded = []
    for ids in tokenizer(list(contexts), add_special_tokens=True)["input_ids"]:
        ids = list(ids)
        while bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
            ids = ids[1:]
        if len(ids) > max_length - 1:
            ids = ids[:1] + ids[len(ids) - (max_length - 2):] if bos is not None and ids[0] == bos else ids[-(max_length - 1):]
        encoded.append(ids)
    targets = torch.tensor([ids[0] for ids in letter_ids])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    out = np.zeros((len(contexts), len(letters)))
    order = np.argsort([-len(ids) for ids in encoded], kind="stable")  # longest first: less padding
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = pad_batch([encoded[i] for i in rows], pad)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        last = mask.sum(1) - 1
        logp = torch.log_softmax(logits[torch.arange(len(rows)), last.to(device)].float(), dim=-1)
        out[rows] = logp[:, targets.to(device)].cpu().numpy()
    return out


def evaluate(model, tokenizer, heldout: dict, cfg: FidelityConfig) -> dict:
    """Held-out answer loss per domain (nats per scored token), its means, and MMLU accuracy.

    Every domain is scored on its answer's own tokens only (`fidelity_pool.scored_pairs`): the whole
    gold answer for GSM8K, HumanEval and chit-chat (`answer_log_likelihood`), the answer letter alone for
    MMLU, whose template words ("The answer is", the "." and the copied option text) are not scored
    (`letter_log_likelihoods`). MMLU accuracy is the argmax of the four letters' log-likelihood in the
    same context; MMLU loss is the gold letter's negative log-likelihood per token.

    Returns:
        `dict`: `loss` (domain -> mean over items of the mean NLL of the scored tokens), `loss_answer`
        (the primary metric: unweighted mean over `PRIMARY_DOMAINS`), `loss_mean_all` (over all four
        domains), `mmlu_acc` and `items` (items per domain).
    """
    from hf_idsel.quality import answer_log_likelihood

    check_letter_tokens(tokenizer)
    pairs = scored_pairs(heldout, lambda messages: render_prompt(tokenizer, messages))
    written = [(d, c, s) for d, c, s in pairs if d != "mmlu"]
    choices = [(c, s.strip()) for d, c, s in pairs if d == "mmlu"]
    was_training = model.training
    model.eval()
    try:
        # One call for the written answers: pairs are batched longest first, with less padding.
        ll = answer_log_likelihood(model, tokenizer, [c for _, c, _ in written], [s for _, _, s in written],
                                   batch_size=cfg.eval_batch_size, max_length=cfg.eval_max_length,
                                   show_progress=False) if written else np.zeros(0)
        letters = letter_log_likelihoods(model, tokenizer, [c for c, _ in choices], max_length=cfg.eval_max_length,
                                         batch_size=cfg.eval_batch_size)
    finally:
        model.train(was_training)
    losses = {d: [] for d in DOMAINS}
    for (domain, _, _), value in zip(written, ll):
        losses[domain].append(-value)
    gold = np.asarray([LETTERS.index(letter) for _, letter in choices], dtype=np.int64)
    counts = np.asarray([len(tokenizer(" " + x, add_special_tokens=False)["input_ids"]) for x in LETTERS])
    losses["mmlu"] = (-letters[np.arange(len(gold)), gold] / counts[gold]).tolist()
    result = {"loss": {d: float(np.mean(v)) for d, v in losses.items() if len(v)}, "items": {d: len(v) for d, v in losses.items()}}
    primary = [result["loss"][d] for d in PRIMARY_DOMAINS if d in result["loss"]]
    result["loss_answer"] = float(np.mean(primary)) if primary else float("nan")
    result["loss_mean_all"] = float(np.mean(list(result["loss"].values())))
    if len(gold):
        result["mmlu_acc"] = float(np.mean(np.argmax(letters, axis=1) == gold))
    return result


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


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


def train_iterative(base, tokenizer, pool: datasets.Dataset, k, cfg: FidelityConfig, seed: int, out: str, *,
                    scorer=None, round_mode: str = "continue"):
    """IterativeSelectionTrainer (iterative kMQ) with LoRA; returns the trainer and the rounds' records.

    `scorer` is a library scorer's name (set in the config), a scorer object (e.g. the placebo, passed to
    the trainer), or `None`: the config's default, i.e. the library's default scorer and reference.
    """
    from hf_idsel.trainer import IterativeSelectionConfig, IterativeSelectionTrainer

    model = copy.deepcopy(base)
    chosen = {"scorer": scorer} if isinstance(scorer, str) else {}
    args = IterativeSelectionConfig(
        budget=cfg.budget, rounds=cfg.rounds, epochs_per_round=1, k=str(k), embedding_column="embedding",
        quality_column="quality", quality_temperature=cfg.quality_temperature,
        weight_update="softmax", weight_temperature=cfg.weight_temperature,
        scored_rows_per_cluster=cfg.scored_rows_per_cluster, generation_max_new_tokens=cfg.generation_max_new_tokens,
        scoring_batch_size=cfg.eval_batch_size, selection_seed=seed, round_mode=round_mode,
        # The last round's scores would only set weights that draw nothing.
        score_last_round=False,
        **chosen,
        **_train_args(cfg, out, seed),
    )
    extra = {} if scorer is None or isinstance(scorer, str) else {"scorer": scorer}
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
    final_steps = int(trainer.state.global_step) - (int(ends[-2]) if round_mode == "restart" and len(ends) > 1 else 0)
    return trainer, {
        "rounds": rounds, "labels": trainer.labels, "final_steps": final_steps, "k_selection": trainer.k_selection,
        "scorer": trainer.scorer_name,
        "reference_model": args.reference_model if trainer.scorer_name == "likelihood" else None,
    }
