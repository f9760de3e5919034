import os

# Before datasets/huggingface_hub are imported (they read these once); the conftest may set them first.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import copy
import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from helpers import BOS, make_tiny_llama, make_tiny_tokenizer, save_tiny_llama, tiny_reward_model, train_tiny
from hf_idsel import scorers as scorers_module
from hf_idsel.errors import InvalidArgumentError
from hf_idsel.lm import answer_log_likelihood, generate_answers
from hf_idsel.rounds import merge_scores
from hf_idsel.scorers import (
    CallableScorer,
    JudgeScorer,
    LikelihoodScorer,
    LossScorer,
    PerplexityScorer,
    RewardScorer,
    RoundScorer,
    as_scorer,
    gold_answers_needed,
    per_row_loss,
    scorer_name,
)


FACTS = {
    "sky": "blue",
    "grass": "green",
    "snow": "white",
    "coal": "black",
    "banana": "yellow",
    "tomato": "red",
    "plum": "purple",
    "lemon": "yellow",
}
JUNK = [
    "zq xv kjw pwo",
    "Numbers 19 fox def print",
    "qqq zzz ### !!",
    "wind plum 1000 lazy range",
    "xk jj vv oo pp",
    "Summarise 7 sea ( ) :",
    "yy pear 13 mm wq",
    "Translate dog 0 kz",
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models on a busy 2-core machine: OpenMP threads spinning against other processes make
    # them ~100x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def render(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )


def fact_rows(tokenizer):
    prompts = [render(tokenizer, f"What colour is the {thing}?") for thing in FACTS]
    golds = [f"The {thing} is {colour}." for thing, colour in FACTS.items()]
    return prompts, golds


@pytest.fixture(scope="module")
def trained():
    """A tiny Llama that answers the colour questions in the chat format (about 1.5 s)."""
    model, tokenizer = make_tiny_llama()
    prompts, golds = fact_rows(tokenizer)
    # The tokenizer adds BOS itself: drop the template's so training sees what generation sees.
    texts = [p[len(BOS) :] + g + tokenizer.eos_token for p, g in zip(prompts, golds)]
    return train_tiny(model, tokenizer, texts, steps=150, lr=1e-2), tokenizer


@pytest.fixture(scope="module")
def trained_answers(trained):
    model, tokenizer = trained
    prompts, _ = fact_rows(tokenizer)
    return generate_answers(model, tokenizer, prompts, max_new_tokens=16, show_progress=False)


# --------------------------------------------------------------------------------------------
# generate_answers
# --------------------------------------------------------------------------------------------


def test_trained_model_generates_pattern_answers_in_input_order(trained, trained_answers):
    _, tokenizer = trained
    _, golds = fact_rows(tokenizer)
    assert trained_answers == golds


def test_generation_is_deterministic_and_batch_invariant(trained):
    model, tokenizer = trained
    prompts, _ = fact_rows(tokenizer)
    # Different lengths: a long prompt, a bare one without the chat format, an empty one.
    prompts = [prompts[0], render(tokenizer, "What colour is the sky? " * 4), "What colour", prompts[3], ""]
    first = generate_answers(model, tokenizer, prompts, max_new_tokens=12, batch_size=3, show_progress=False)
    second = generate_answers(model, tokenizer, prompts, max_new_tokens=12, batch_size=3, show_progress=False)
    one_by_one = generate_answers(model, tokenizer, prompts, max_new_tokens=12, batch_size=1, show_progress=False)
    alone = [generate_answers(model, tokenizer, [p], max_new_tokens=12, show_progress=False)[0] for p in prompts]
    assert len(first) == len(prompts) and all(isinstance(a, str) for a in first)
    assert first == second == one_by_one == alone
    assert first[0] == "The sky is blue." and first[3] == "The coal is black."
    assert generate_answers(model, tokenizer, [], show_progress=False) == []


def test_generation_leaves_tokenizer_and_model_mode_alone(trained):
    model, tokenizer = trained
    prompts, _ = fact_rows(tokenizer)
    for side in ("right", "left"):
        tokenizer.padding_side = side
        generate_answers(model, tokenizer, prompts[:3], max_new_tokens=4, batch_size=2, show_progress=False)
        assert tokenizer.padding_side == side
    tokenizer.padding_side = "right"
    assert tokenizer.pad_token == "<pad>"
    model.train()
    try:
        generate_answers(model, tokenizer, prompts[:2], max_new_tokens=4, show_progress=False)
        assert model.training
    finally:
        model.eval()
    generate_answers(model, tokenizer, prompts[:2], max_new_tokens=4, show_progress=False)
    assert not model.training


def test_generation_left_pads_and_never_doubles_bos(trained, monkeypatch):
    model, tokenizer = trained
    seen = []
    original = model.generate

    def spy(**kwargs):
        seen.append((kwargs["input_ids"].clone(), kwargs["attention_mask"].clone()))
        return original(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    with_bos = render(tokenizer, "What colour is the snow?")
    assert with_bos.startswith(BOS)
    without_bos = with_bos[len(BOS) :]
    answers = generate_answers(
        model, tokenizer, [with_bos, without_bos, "Hi"], max_new_tokens=8, batch_size=3, show_progress=False
    )
    assert answers[0] == answers[1] == "The snow is white."
    (input_ids, mask), = seen
    for row, row_mask in zip(input_ids.tolist(), mask.tolist()):
        start = row_mask.index(1)
        assert all(row_mask[start:])  # left padding: the real tokens are flush right
        assert row[start] == tokenizer.bos_token_id and row[start + 1] != tokenizer.bos_token_id
    assert input_ids[0].tolist() == input_ids[1].tolist()


def test_generation_without_pad_token_falls_back_to_eos(trained):
    model, tokenizer = trained
    prompts, golds = fact_rows(tokenizer)
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    assert no_pad.pad_token_id is None
    answers = generate_answers(model, no_pad, prompts[:4], max_new_tokens=16, batch_size=4, show_progress=False)
    assert answers == golds[:4]


def test_generation_stops_at_the_tokenizer_eos_when_the_model_names_none(trained):
    model, tokenizer = trained
    prompts, golds = fact_rows(tokenizer)
    bare = copy.deepcopy(model)
    bare.generation_config.eos_token_id = None
    assert generate_answers(bare, tokenizer, prompts[:3], max_new_tokens=24, show_progress=False) == golds[:3]


def test_generation_through_peft_model(trained):
    peft = pytest.importorskip("peft")
    model, tokenizer = trained
    prompts, golds = fact_rows(tokenizer)
    # LoRA starts as the identity (B = 0): the wrapped model must answer exactly as the base did.
    wrapped = peft.get_peft_model(
        copy.deepcopy(model), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    )
    wrapped.train()
    answers = generate_answers(wrapped, tokenizer, prompts, max_new_tokens=16, batch_size=3, show_progress=False)
    assert answers == golds
    assert wrapped.training
    # The trainer binds the wrapped model to the perplexity scorer.
    generations = JUNK[: len(prompts)]
    through_peft = PerplexityScorer(show_progress=False).bind(wrapped, tokenizer)(prompts, golds, generations)
    base = PerplexityScorer(show_progress=False).bind(model, tokenizer)(prompts, golds, generations)
    np.testing.assert_allclose(through_peft, base, atol=1e-5)
    assert wrapped.training


def test_generation_validates_arguments(trained):
    model, tokenizer = trained
    with pytest.raises(InvalidArgumentError, match="max_new_tokens"):
        generate_answers(model, tokenizer, ["a"], max_new_tokens=0)
    with pytest.raises(InvalidArgumentError, match="prompts"):
        generate_answers(model, tokenizer, "a single string")
    with pytest.raises(InvalidArgumentError, match="row 1"):
        generate_answers(model, tokenizer, ["a", None])


# --------------------------------------------------------------------------------------------
# PerplexityScorer
# --------------------------------------------------------------------------------------------


def test_perplexity_scorer_gives_junk_gold_a_high_score(trained, trained_answers):
    model, tokenizer = trained
    prompts, golds = fact_rows(tokenizer)
    scorer = PerplexityScorer(batch_size=4, show_progress=False).bind(model, tokenizer)
    pattern = scorer(prompts, golds, trained_answers)
    junk = scorer(prompts, JUNK, trained_answers)
    assert pattern.dtype == np.float64 and pattern.shape == (len(prompts),)
    # The model's answers are the gold ones: gold and generation are equally likely.
    np.testing.assert_allclose(pattern, 0.0, atol=1e-5)
    # Known behaviour of perplexity scorers: the model finds junk surprising, so junk looks "hard".
    assert (junk > pattern + 1.0).all()


def test_perplexity_scorer_is_the_log_perplexity_difference(trained):
    model, tokenizer = trained
    prompts, golds = fact_rows(tokenizer)
    generations = JUNK[: len(prompts)]
    scores = PerplexityScorer(batch_size=3, show_progress=False).bind(model, tokenizer)(prompts, golds, generations)
    ll_gold = answer_log_likelihood(model, tokenizer, prompts, golds, show_progress=False)
    ll_gen = answer_log_likelihood(model, tokenizer, prompts, generations, show_progress=False)
    # log PPL = -ll, so S = log PPL(gold) - log PPL(gen) = ll(gen) - ll(gold).
    np.testing.assert_allclose(scores, ll_gen - ll_gold, atol=1e-5)
    assert (scores < 0).all()  # junk generations lose to the gold answers the model learned


def test_perplexity_scorer_handles_empty_generations(trained):
    model, tokenizer = trained
    prompts, golds = fact_rows(tokenizer)
    prompts, golds = prompts[:3], golds[:3]
    generations = ["The sky is blue.", "", JUNK[0]]
    scorer = PerplexityScorer(show_progress=False).bind(model, tokenizer)
    scores = scorer(prompts, golds, generations)
    assert np.isfinite(scores).all()
    ll_gold = answer_log_likelihood(model, tokenizer, prompts, golds, show_progress=False)
    ll_gen = answer_log_likelihood(
        model, tokenizer, [prompts[0], prompts[2]], [generations[0], generations[2]], show_progress=False
    )
    floor = min(ll_gold.min(), ll_gen.min()) - 1.0
    np.testing.assert_allclose(scores[1], floor - ll_gold[1], atol=1e-5)
    np.testing.assert_allclose(scores[[0, 2]], ll_gen - ll_gold[[0, 2]], atol=1e-5)
    all_empty = scorer(prompts, golds, ["", "", ""])
    np.testing.assert_allclose(all_empty, ll_gold.min() - 1.0 - ll_gold, atol=1e-5)


def test_perplexity_scorer_needs_a_bound_model(trained):
    with pytest.raises(InvalidArgumentError, match="bind"):
        PerplexityScorer(show_progress=False)(["p"], ["g"], ["x"])


# --------------------------------------------------------------------------------------------
# LikelihoodScorer
# --------------------------------------------------------------------------------------------


def test_likelihood_scorer_prefers_pattern_gold_over_junk(trained):
    model, tokenizer = trained
    prompts, golds = fact_rows(tokenizer)
    generation = ["The answer is a colour."] * len(prompts)
    scorer = LikelihoodScorer(model, tokenizer=tokenizer, batch_size=3, show_progress=False)
    good = scorer(prompts, golds, generation)
    junk = scorer(prompts, JUNK, generation)
    assert (good > junk).all()
    assert (good > 0).all() and (junk < 0).all()
    ll = answer_log_likelihood(model, tokenizer, prompts + prompts, golds + generation, show_progress=False)
    np.testing.assert_allclose(good, ll[: len(prompts)] - ll[len(prompts) :], atol=1e-5)
    # An empty generation is the worst answer: any gold beats it.
    with_empty = scorer(prompts[:2], JUNK[:2], ["", "The answer is a colour."])
    assert with_empty[0] > 0 and np.isfinite(with_empty).all()


def test_likelihood_scorer_loads_its_reference_lazily_once(trained, tmp_path, monkeypatch):
    model, tokenizer = trained
    path = save_tiny_llama(model, tokenizer, tmp_path / "reference")
    calls = []
    original = scorers_module.load_reference_model

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(scorers_module, "load_reference_model", counting)
    scorer = LikelihoodScorer(path, show_progress=False)
    assert calls == []
    prompts, golds = fact_rows(tokenizer)
    first = scorer(prompts[:2], golds[:2], JUNK[:2])
    second = scorer(prompts[:2], golds[:2], JUNK[:2])
    assert len(calls) == 1
    np.testing.assert_array_equal(first, second)
    expected = LikelihoodScorer(model, tokenizer=tokenizer, show_progress=False)(prompts[:2], golds[:2], JUNK[:2])
    np.testing.assert_allclose(first, expected, atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="reference"):
        LikelihoodScorer(3)


# --------------------------------------------------------------------------------------------
# RewardScorer
# --------------------------------------------------------------------------------------------


GOOD = [
    "good answer",
    "a good and clear reply",
    "this is good",
    "good good",
    "very good, thanks",
    "the good one",
    "good: the sky is blue",
    "so good",
]


@pytest.fixture(scope="module")
def reward_pair():
    """A tiny reward model trained to rate texts with "good" above junk (about 1 s)."""
    tokenizer = make_tiny_tokenizer()
    model = tiny_reward_model(tokenizer)
    prompts = [render(tokenizer, f"Say something about the {thing}.") for thing in FACTS]
    texts = [p + a for p, a in zip(prompts, GOOD)] + [p + j for p, j in zip(prompts, JUNK)]
    targets = torch.tensor([1.0] * len(GOOD) + [-1.0] * len(JUNK))
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        loss = torch.nn.functional.mse_loss(model(**batch).logits[:, 0], targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model, tokenizer, prompts


def single_reward(model, tokenizer, text: str) -> float:
    ids = tokenizer(text, add_special_tokens=not text.startswith(BOS))["input_ids"]
    with torch.no_grad():
        return float(model(torch.tensor([ids])).logits[0, 0])


def test_reward_scorer_prefers_good_gold(reward_pair):
    model, tokenizer, prompts = reward_pair
    scorer = RewardScorer(model, tokenizer, batch_size=3, show_progress=False, template="policy")
    good_gold = scorer(prompts, GOOD, JUNK)
    junk_gold = scorer(prompts, JUNK, GOOD)
    assert (good_gold > junk_gold).all()
    assert (good_gold > 0).all() and (junk_gold < 0).all()


def test_reward_scorer_reads_each_text_at_its_last_token(reward_pair):
    model, tokenizer, prompts = reward_pair
    # Uneven lengths in one batch: right padding must not move the reward read-out.
    golds = ["good", "good " * 12, JUNK[2], "a"]
    generations = [JUNK[0] * 3, "", "good answer", "good good good"]
    scores = RewardScorer(model, tokenizer, batch_size=4, show_progress=False, template="policy")(prompts[:4], golds, generations)
    expected = [
        single_reward(model, tokenizer, p + g) - single_reward(model, tokenizer, p + x)
        for p, g, x in zip(prompts, golds, generations)
    ]
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_reward_scorer_sets_a_missing_pad_token_id(reward_pair):
    model, tokenizer, prompts = reward_pair
    unpadded = tiny_reward_model(tokenizer, pad=False)
    unpadded.load_state_dict(model.state_dict())
    assert unpadded.config.pad_token_id is None
    scorer = RewardScorer(unpadded, tokenizer, batch_size=4, show_progress=False, template="policy")
    assert unpadded.config.pad_token_id == tokenizer.pad_token_id
    reference = RewardScorer(model, tokenizer, batch_size=1, show_progress=False, template="policy")
    np.testing.assert_allclose(scorer(prompts, GOOD, JUNK), reference(prompts, GOOD, JUNK), atol=1e-5)


def test_reward_scorer_loads_from_a_folder_and_restores_mode(reward_pair, tmp_path):
    model, tokenizer, prompts = reward_pair
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    loaded = RewardScorer(str(tmp_path / "rm"), device="cpu", show_progress=False, template="policy")
    np.testing.assert_allclose(
        loaded(prompts, GOOD, JUNK), RewardScorer(model, tokenizer, show_progress=False, template="policy")(prompts, GOOD, JUNK), atol=1e-5
    )
    model.train()
    try:
        RewardScorer(model, tokenizer, show_progress=False, template="policy")(prompts[:1], GOOD[:1], JUNK[:1])
        assert model.training
    finally:
        model.eval()


def test_reward_scorer_rejects_multi_label_models(tmp_path):
    tokenizer = make_tiny_tokenizer()
    two_labels = tiny_reward_model(tokenizer, num_labels=2)
    with pytest.raises(InvalidArgumentError, match="single scalar output"):
        RewardScorer(two_labels, tokenizer)
    two_labels.save_pretrained(tmp_path / "classifier")
    tokenizer.save_pretrained(tmp_path / "classifier")
    with pytest.raises(InvalidArgumentError, match="num_labels=1"):
        RewardScorer(str(tmp_path / "classifier"))
    with pytest.raises(InvalidArgumentError, match="tokenizer="):
        RewardScorer(tiny_reward_model(tokenizer))  # a bare object has no name to load a tokenizer from


def word_level_tokenizer():
    backend = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    words = "the sky is blue grass green snow white a b c d e f g h i j k l m n o p q r s t u"
    backend.train_from_iterator([words], trainer=trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


def test_check_encodable_flags_unreadable_text():
    tokenizer = word_level_tokenizer()
    scorer = RewardScorer(tiny_reward_model(tokenizer), tokenizer, show_progress=False, template="policy")
    known = "the sky is blue and the grass is green"  # "and": 1 unknown in 9 tokens
    scorer.check_encodable(["the sky is blue", "snow is white"])
    letters = "a b c d e f g h i j k l m n o p q r s t u the sky is"  # 25 known tokens
    scorer.check_encodable([letters + " zzz"])  # 1 of 26 unknown: under 5%
    with pytest.raises(InvalidArgumentError, match=r"`reward_model`.*text 1"):
        scorer.check_encodable([letters + " zzz", letters + " zzz yyy"])  # 2 of 27: over 5%
    with pytest.raises(InvalidArgumentError, match="cannot encode"):
        scorer.check_encodable([known])
    with pytest.raises(InvalidArgumentError, match="das Wetter"):
        scorer.check_encodable(["das Wetter ist schön"])
    with pytest.raises(InvalidArgumentError, match="no tokens"):
        scorer.check_encodable(["the sky", "   "])


def test_check_encodable_accepts_byte_level_tokenizers(reward_pair):
    model, tokenizer, prompts = reward_pair
    scorer = RewardScorer(model, tokenizer, show_progress=False, template="policy")
    texts = [p + j for p, j in zip(prompts, JUNK)] + ["das Wetter ist schön ☃"]
    scorer.check_encodable(texts)  # a byte-level vocabulary has no unknown token: every script is readable
    assert tokenizer.unk_token_id is None or all(
        tokenizer.unk_token_id not in ids for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]
    )
    rewards = scorer.rewards(texts)
    assert rewards.shape == (len(texts),) and np.isfinite(rewards).all()


# The reward model's own format, unlike the tiny policy's `<s>role\ncontent</s>` turns.
RM_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}### {{ message['role'] | upper }}: {{ message['content'] }}\n"
    "{% endfor %}{{ eos_token }}"
)


def reward_model_with_own_template():
    """A tiny reward model whose tokenizer's chat template differs from the policy's."""
    tokenizer = make_tiny_tokenizer()
    tokenizer.chat_template = RM_TEMPLATE
    return tiny_reward_model(tokenizer), tokenizer


def record_inputs(model) -> list[list[int]]:
    """The unpadded token ids of every sequence the model is called on, in call order."""
    seen: list[list[int]] = []

    def hook(module, args, kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        seen.extend(row[m.bool()].tolist() for row, m in zip(ids, mask))

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def rm_ids(tokenizer, turns, answer):
    return tokenizer.apply_chat_template(
        turns + [{"role": "assistant", "content": answer}], tokenize=True, return_dict=False
    )


CONVERSATIONS = [
    [{"role": "user", "content": "What colour is the sky?"}],
    [  # multi-turn with a system prompt: every prompt turn must reach the reward model
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "What colour is snow?"},
        {"role": "assistant", "content": "White."},
        {"role": "user", "content": "And coal?"},
    ],
    [{"role": "user", "content": "Write a short poem about the sea and the wind, please."}],
]


def test_reward_scorer_reads_the_conversation_in_its_own_chat_template():
    model, tokenizer = reward_model_with_own_template()
    policy = make_tiny_tokenizer()
    prompts = [policy.apply_chat_template(t, tokenize=False, add_generation_prompt=True) for t in CONVERSATIONS]
    golds, generations = ["Blue.", "Black.", "The sea sings."], ["Green.", "", "good good good good"]
    seen = record_inputs(model)
    scorer = RewardScorer(model, tokenizer, batch_size=4, show_progress=False)
    assert scorer.needs_conversations
    scores = scorer(prompts, golds, generations, conversations=CONVERSATIONS)
    expected = [rm_ids(tokenizer, t, a) for t, a in zip(CONVERSATIONS + CONVERSATIONS, golds + generations)]
    assert sorted(seen) == sorted(expected)
    seen.clear()
    # The policy's role markers never reach the reward model; all three prompt turns of row 1 do.
    text = tokenizer.decode(expected[1])
    assert "<s>user" not in text and text.count("### ") == 5 and "Answer in one word." in text
    single = [single_reward(model, tokenizer, tokenizer.decode(ids)) for ids in expected]
    np.testing.assert_allclose(scores, np.subtract(single[:3], single[3:]), atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="conversations="):
        scorer(prompts, golds, generations)  # rendered prompts alone cannot be put in the reward model's format
    with pytest.raises(InvalidArgumentError, match="row 1"):
        scorer(prompts, golds, generations, conversations=[CONVERSATIONS[0], "What colour is snow?", CONVERSATIONS[2]])


def test_reward_scorer_template_argument(tmp_path):
    model, tokenizer = reward_model_with_own_template()
    bare = make_tiny_tokenizer()
    bare.chat_template = None
    with pytest.raises(InvalidArgumentError, match=r"no chat template.*`template=`.*'policy'"):
        RewardScorer(model, bare)  # never a silent mismatch
    # The fallbacks: the reward model's template as text or as a .jinja file, or the policy's text on request.
    path = tmp_path / "rm.jinja"
    path.write_text(RM_TEMPLATE)
    from_text = RewardScorer(model, bare, show_progress=False, template=RM_TEMPLATE)
    from_file = RewardScorer(model, bare, show_progress=False, template=str(path))
    own = RewardScorer(model, tokenizer, show_progress=False)
    texts = [own.texts([""], ["Blue."], [CONVERSATIONS[1]]), from_text.texts([""], ["Blue."], [CONVERSATIONS[1]])]
    assert texts[0] == texts[1] == from_file.texts([""], ["Blue."], [CONVERSATIONS[1]])
    policy = RewardScorer(model, bare, show_progress=False, template="policy")
    assert not policy.needs_conversations
    assert policy.texts(["<s>user\nHi</s>\n<s>assistant\n"], ["Hello"]) == ["<s>user\nHi</s>\n<s>assistant\nHello"]
    with pytest.raises(InvalidArgumentError, match="neither a file nor a Jinja"):
        RewardScorer(model, bare, template="chatml")
    with pytest.raises(InvalidArgumentError, match="cannot render"):
        RewardScorer(model, bare, template="{% for m in messages %}{{ m['content'] }")
    with pytest.raises(InvalidArgumentError, match="drops the assistant turn"):
        RewardScorer(model, bare, template="{% for m in messages if m['role'] == 'user' %}{{ m['content'] }}{% endfor %}")


SYSTEM = "Answer in one word."


def rm_pool(layout: str):
    """Eight rows in one pool layout; the chat rows are multi-turn with a system prompt."""
    import datasets

    rng = np.random.default_rng(0)
    rows = []
    for i, (thing, colour) in enumerate(FACTS.items()):
        question, answer = f"What colour is the {thing}?", f"The {thing} is {colour}."
        embedding = (np.eye(8)[i % 2] + 0.01 * rng.normal(size=8)).tolist()
        if layout == "messages":
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "Hello."},
                {"role": "assistant", "content": "Hi."},
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            rows.append({"messages": messages, "embedding": embedding})
        elif layout == "sharegpt":
            turns = [{"from": "system", "value": SYSTEM}, {"from": "human", "value": question}, {"from": "gpt", "value": answer}]
            rows.append({"conversations": turns, "embedding": embedding})
        else:
            rows.append({"prompt": question, "completion": answer, "embedding": embedding})
    return datasets.Dataset.from_list(rows)


EXPECTED_TURNS = {
    "messages": lambda q: [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Hello."},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": q},
    ],
    "sharegpt": lambda q: [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
    "prompt_completion": lambda q: [{"role": "user", "content": q}],
}


@pytest.mark.parametrize("layout", ["messages", "sharegpt", "prompt_completion"])
def test_trainer_gives_the_reward_model_its_own_format_of_every_pool_layout(layout, tmp_path):
    from hf_idsel.render import prompt_and_answer, resolve_render_options
    from hf_idsel.trainer import IterativeSelectionConfig, IterativeSelectionTrainer

    policy, policy_tokenizer = make_tiny_llama()
    reward, reward_tokenizer = reward_model_with_own_template()
    seen = record_inputs(reward)
    args = IterativeSelectionConfig(
        output_dir=str(tmp_path), budget=4, rounds=2, k="2", embedding_column="embedding", scored_rows_per_cluster=0,
        generation_max_new_tokens=4, max_length=64, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
    )
    pool = rm_pool(layout)
    trainer = IterativeSelectionTrainer(
        policy, args=args, train_dataset=pool, processing_class=policy_tokenizer,
        scorer=RewardScorer(reward, reward_tokenizer, show_progress=False),
    )
    seen.clear()  # the pool check at set-up reads the same texts; score one round's rows
    rows = np.array([1, 4, 6])
    trainer._score_round(rows)
    options = resolve_render_options(pool.column_names, tokenizer=policy_tokenizer)
    prompts, golds = zip(*(prompt_and_answer(pool[int(r)], options, policy_tokenizer) for r in rows))
    generations = generate_answers(policy, policy_tokenizer, list(prompts), max_new_tokens=4, show_progress=False)
    turns = [EXPECTED_TURNS[layout](f"What colour is the {list(FACTS)[r]}?") for r in rows]
    expected = [rm_ids(reward_tokenizer, t, a) for t, a in zip(turns + turns, list(golds) + generations)]
    assert sorted(seen) == sorted(expected)
    assert golds[0] == f"The {list(FACTS)[1]} is {FACTS[list(FACTS)[1]]}."


def test_recipe_template_gives_hh_rlhf_reward_model_its_format():
    """recipes/chat_templates/hh_rlhf.jinja: the research code's reward model reads `###Human:` / `###Assistant:`."""
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "recipes" / "chat_templates" / "hh_rlhf.jinja"
    bare = make_tiny_tokenizer()
    bare.chat_template = None  # like hh_rlhf_rm_open_llama_3b's tokenizer
    scorer = RewardScorer(tiny_reward_model(bare), bare, show_progress=False, template=path)
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sky?"}]
    assert scorer.texts([""], ["Blue."], [turns]) == ["<s>Be brief. ###Human: Sky? ###Assistant: Blue."]


class WordCount(RoundScorer):
    """A subclass written for the three-list interface, before `conversations=` existed."""

    def _score(self, prompts, golds, generations):
        return [len(g.split()) - len(x.split()) for g, x in zip(golds, generations)]


def test_scorers_without_conversations_are_called_as_before(trained):
    model, tokenizer = trained
    prompts = [render(tokenizer, "What colour is the sky?"), render(tokenizer, "What colour is snow?")]
    calls = []

    def judge(prompts, golds, generations):
        calls.append((prompts, golds, generations))
        return [1.0, 2.0]

    turns = [[{"role": "user", "content": "x"}]] * 2
    for scorer in (WordCount(), CallableScorer(judge)):
        assert not scorer.needs_conversations
        plain = scorers_module.score_rows(scorer, model, tokenizer, prompts, ["a b", "c"], max_new_tokens=4, show_progress=False)
        given = scorers_module.score_rows(
            scorer, model, tokenizer, prompts, ["a b", "c"], conversations=turns, max_new_tokens=4, show_progress=False
        )
        np.testing.assert_array_equal(plain, given)
    assert len(calls) == 2 and calls[0] == calls[1] and len(calls[0]) == 3
    np.testing.assert_array_equal(WordCount()(["p"], ["a b c"], ["d"], conversations=None), [2.0])


# --------------------------------------------------------------------------------------------
# JudgeScorer, CallableScorer and the shared checks
# --------------------------------------------------------------------------------------------


def keyword_judge(prompts, completions):
    return [completion.count("good") for completion in completions]


def test_judge_scorer_exact_scores():
    scorer = JudgeScorer(keyword_judge)
    scores = scorer(["p1", "p2", "p3"], ["good good", "bad", "good"], ["good", "good good good", ""])
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(scores, [1.0, -3.0, 1.0])
    assert scorer.needs_generation


def test_judge_scorer_validates_the_judge_output():
    with pytest.raises(InvalidArgumentError, match="`judge`.*one number per row"):
        JudgeScorer(lambda p, c: [1.0])(["a", "b"], ["x", "y"], ["x", "y"])
    with pytest.raises(InvalidArgumentError, match="`judge`.*non-finite"):
        JudgeScorer(lambda p, c: [1.0, float("nan")])(["a", "b"], ["x", "y"], ["x", "y"])
    with pytest.raises(InvalidArgumentError, match="`judge` must return numbers"):
        JudgeScorer(lambda p, c: ["great", "poor"])(["a", "b"], ["x", "y"], ["x", "y"])
    with pytest.raises(InvalidArgumentError, match="callable"):
        JudgeScorer("gpt-4")


def test_callable_scorer():
    received = []

    def fn(prompts, golds, generations):
        received.append(generations)
        return np.array([len(g) for g in golds], dtype=np.float32)

    no_generation = CallableScorer(fn, needs_generation=False)
    assert not no_generation.needs_generation
    scores = no_generation(["a", "b"], ["xx", "yyy"], ["ignored", "ignored"])
    assert received == [None]
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(scores, [2.0, 3.0])

    with_generation = CallableScorer(lambda p, g, x: [len(a) - len(b) for a, b in zip(g, x)])
    assert with_generation.needs_generation
    np.testing.assert_array_equal(with_generation(["a"], ["xxxx"], ["x"]), [3.0])
    with pytest.raises(InvalidArgumentError, match="`fn`.*non-finite"):
        CallableScorer(lambda p, g, x: [float("nan")], needs_generation=False)(["a"], ["b"], None)
    with pytest.raises(InvalidArgumentError, match="`fn`.*one number per row"):
        CallableScorer(lambda p, g, x: [1.0, 2.0])(["a"], ["b"], ["c"])


class _InfiniteScorer(RoundScorer):
    needs_generation = False

    def _score(self, prompts, golds, generations):
        return np.full(len(prompts), np.inf)


def test_scorers_check_inputs_and_outputs():
    scorer = JudgeScorer(keyword_judge)
    with pytest.raises(InvalidArgumentError, match="`golds` has 1"):
        scorer(["a", "b"], ["x"], ["x", "y"])
    with pytest.raises(InvalidArgumentError, match="`generations` has 1"):
        scorer(["a", "b"], ["x", "y"], ["x"])
    with pytest.raises(InvalidArgumentError, match="pass `generations`"):
        scorer(["a"], ["x"], None)
    with pytest.raises(InvalidArgumentError, match="`golds` rows \\[1\\]"):
        scorer(["a", "b"], ["x", ""], ["x", "y"])
    with pytest.raises(InvalidArgumentError, match="`golds` row 0"):
        scorer(["a"], [None], ["x"])
    with pytest.raises(InvalidArgumentError, match="_InfiniteScorer returned non-finite"):
        _InfiniteScorer()(["a"], ["x"], None)
    empty = scorer([], [], [])
    assert empty.dtype == np.float64 and empty.shape == (0,)


# --------------------------------------------------------------------------------------------
# The round-end interface: LossScorer and the hooks the trainer calls
# --------------------------------------------------------------------------------------------


def test_every_scorer_is_a_round_scorer_and_says_whether_it_needs_gold_answers():
    loss = as_scorer("loss", None)
    assert isinstance(loss, LossScorer) and isinstance(loss, RoundScorer) and as_scorer(loss, None) is loss
    judge = JudgeScorer(keyword_judge)
    assert [gold_answers_needed(s) for s in ("loss", loss, "reward", "likelihood", judge, keyword_judge)] == [
        False, False, True, True, True, True,
    ]
    assert [scorer_name(s) for s in ("loss", loss, judge, keyword_judge, as_scorer(keyword_judge, None))] == [
        "loss", "loss", "judge", "callable", "callable",
    ]
    with pytest.raises(InvalidArgumentError, match="cannot score texts"):
        loss(["a"], ["b"], None)


def test_loss_scorer_records_training_passes_only_and_carries_them_across_a_checkpoint(trained):
    model, tokenizer = copy.deepcopy(trained[0]), trained[1]
    prompts, golds = fact_rows(tokenizer)
    batch = tokenizer([p + g for p, g in zip(prompts[:3], golds[:3])], padding=True, return_tensors="pt")
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :4] = -100  # the first tokens as prompt: not scored
    rows = torch.tensor([7, 2, 5])
    scorer = LossScorer()
    scorer.attach(model)
    with torch.no_grad():
        expected = per_row_loss(model(input_ids=input_ids, attention_mask=attention_mask), labels).tolist()
        assert scorer.losses == []  # a pass outside training (scoring, evaluation) is not recorded
        with scorer.training_batch(rows, labels):
            model(input_ids=input_ids, attention_mask=attention_mask)
        with pytest.raises(RuntimeError), scorer.training_batch(rows[:1], labels[:1]):
            raise RuntimeError("a failed forward pass records nothing")
        model(input_ids=input_ids[:1], attention_mask=attention_mask[:1])
    assert [row for row, _ in scorer.losses] == [7, 2, 5]
    np.testing.assert_allclose([loss for _, loss in scorer.losses], expected, rtol=1e-6)
    assert all(loss > 0 for loss in expected)

    saved = json.loads(json.dumps(scorer.state()))  # what a checkpoint writes
    resumed = LossScorer()
    resumed.restore(saved)
    assert resumed.state() == saved and resumed.losses == scorer.losses
    resumed.reset()
    assert resumed.state() == [] and RoundScorer.state(JudgeScorer(keyword_judge)) == []
    for damaged in ([["7", 1.0]], [[7, float("nan")]], [[7]], [[True, 1.0]], ["7:1.0"]):
        with pytest.raises(InvalidArgumentError, match="pending losses must be \\[row, loss\\] pairs"):
            LossScorer().restore(damaged)


class TopicScorer(RoundScorer):
    """A scorer that decides itself what a round runs: every candidate row scores its pool topic, nothing generated."""

    name = "topic"
    needs_generation = False

    def __init__(self, topics):
        self.topics = topics
        self.calls = []

    def _score(self, prompts, golds, generations):
        return [float(len(g)) for g in golds]

    def prepare(self, context):
        self.calls.append(("prepare", context.pool_size, context.labels))

    def score_round(self, rows, context):
        self.calls.append(("score_round", context.round_index, len(rows)))
        mine = rows[context.rank :: context.world_size]
        return merge_scores(context.gather([(int(r), float(self.topics[r])) for r in mine]))

    def reset(self):
        self.calls.append(("reset",))


def test_the_trainer_runs_the_scorers_own_hooks(tmp_path):
    from helpers import single_thread
    from helpers import make_pool, make_trainer, read_rounds

    pool = make_pool()
    scorer = TopicScorer(pool["topic"])
    with single_thread():
        trainer = make_trainer(tmp_path, pool=pool, scorer=scorer, budget=16, rounds=2, score_last_round=False)
        trainer.train()
    first = read_rounds(trainer.args.output_dir)[0]
    assert first["scorer"] == "topic"
    chosen = np.asarray(first["selected"])
    topics = np.asarray(pool["topic"])
    in_cluster = [chosen[trainer.labels[chosen] == c] for c in range(trainer.k)]
    expected = [float(np.mean(topics[rows])) if len(rows) else None for rows in in_cluster]
    assert first["cluster_scores"] == expected
    assert scorer.calls == [("prepare", len(pool), None), ("score_round", 1, len(chosen)), ("reset",), ("reset",)]


# --------------------------------------------------------------------------------------------
# The packaged SmolLM2 as reference and as the generating model
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_reference_scores_and_generates(smollm2):
    model, tokenizer = smollm2
    scorer = LikelihoodScorer(model, tokenizer=tokenizer, device="cpu", max_length=256, show_progress=False)
    questions = [
        "What is the capital of France?",
        "What is 2 + 3?",
        "Name a colour of the sky on a clear day.",
    ]
    golds = ["The capital of France is Paris.", "2 + 3 = 5.", "The sky is blue on a clear day."]
    junk = ["Bananas photosynthesise loudly on Tuesdays.", "Purple elephant seventeen.", "zq xv kjw pwo lorem"]
    prompts = [render(tokenizer, q) for q in questions]
    good_gold = scorer(prompts, golds, junk)
    junk_gold = scorer(prompts, junk, golds)
    assert (good_gold > 0).all() and (junk_gold < 0).all()
    answers = generate_answers(model, tokenizer, prompts[:1], max_new_tokens=16, show_progress=False)
    assert "Paris" in answers[0]


def test_likelihood_scorer_with_the_base_as_reference_needs_no_second_model(trained, monkeypatch):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = trained
    base = copy.deepcopy(model)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    with torch.no_grad():  # adapters that change the model (LoRA's B starts at zero)
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    loads, original = [], scorers_module.load_reference_model
    monkeypatch.setattr(scorers_module, "load_reference_model", lambda *a, **k: loads.append(a) or original(*a, **k))
    prompts, golds = fact_rows(tokenizer)
    generations = ["The answer is a colour."] * len(prompts)
    scorer = LikelihoodScorer("base", batch_size=3, show_progress=False)
    with pytest.raises(InvalidArgumentError, match="call `scorer.bind"):
        scorer(prompts, golds, generations)
    free = scorer.bind(peft_model, tokenizer)(prompts, golds, generations)
    assert loads == []  # nothing loaded: the reference is the trained model with its adapters off
    # The same scores as a separate copy of the base model, and not those of the adapted model.
    separate = LikelihoodScorer(base, tokenizer=tokenizer, batch_size=3, show_progress=False)(prompts, golds, generations)
    np.testing.assert_allclose(free, separate, atol=1e-5)
    adapted = LikelihoodScorer(peft_model, tokenizer=tokenizer, batch_size=3, show_progress=False)(prompts, golds, generations)
    assert np.abs(free - adapted).max() > 1e-3
    # The adapters are back on afterwards.
    again = LikelihoodScorer(peft_model, tokenizer=tokenizer, batch_size=3, show_progress=False)(prompts, golds, generations)
    np.testing.assert_allclose(again, adapted, atol=1e-6)
    # A model without adapters has no base to fall back to.
    with pytest.raises(InvalidArgumentError, match="has none: train with a `peft_config`"):
        scorer.bind(base, tokenizer)
