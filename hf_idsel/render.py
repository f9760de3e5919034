"""Render: turn a pool row into the (prompt, answer) text pair that the encoder and scorers see.

Supported row layouts (detected from the column names unless `format` is given):

- `"messages"`: a chat column (`messages`, or ShareGPT `conversations` with `from`/`value`); the
  last assistant turn is the answer, everything before it is the prompt.
- `"prompt_completion"`: `prompt` + `completion` (also `prompt`/`response`, `question`/`answer`);
  either side may be a string or a list of chat messages, as in TRL.
- `"alpaca"`: `instruction` + optional `input`/`context` + `output`/`response`.
- `"text"`: one text column (`text`, or `text_column=`); no separate answer.
- `"template"`: a `str.format` template over the row's columns, e.g. `"{title}\\n{body}"`.

Validation runs on the Arrow data (types and nulls), so bad input fails before any encoder runs.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InvalidArgumentError


FORMATS = ("messages", "prompt_completion", "alpaca", "text", "template")

# (format, {role: column}) in detection order; the first layout whose required columns exist wins.
_LAYOUTS = (
    ("messages", {"messages": "messages"}),
    ("messages", {"messages": "conversations"}),
    ("prompt_completion", {"prompt": "prompt", "answer": "completion"}),
    ("prompt_completion", {"prompt": "prompt", "answer": "response"}),
    ("prompt_completion", {"prompt": "question", "answer": "answer"}),
    ("alpaca", {"instruction": "instruction", "answer": "output"}),
    ("alpaca", {"instruction": "instruction", "answer": "response"}),
    ("text", {"text": "text"}),
)
_ALPACA_INPUT_COLUMNS = ("input", "context")
_ROLE_KEYS = (("role", "content"), ("from", "value"))
_ASSISTANT_ROLES = ("assistant", "gpt", "model", "bot")


@dataclass(frozen=True)
class RenderOptions:
    """How rows become text. Part of every cache key and of the selection manifest.

    Args:
        format (`str`):
            One of `"messages"`, `"prompt_completion"`, `"alpaca"`, `"text"`, `"template"`.
        columns (`dict[str, str]`):
            Which column plays which part (`messages`, `prompt`, `answer`, `instruction`, `input`,
            `text`).
        template (`str`, *optional*):
            The `str.format` template for `format="template"`.
        include_answer (`bool`, *optional*, defaults to `True`):
            Embed prompt and answer together (the paper) or the prompt only (the research code).
        chat_template (`str`, *optional*):
            Name of the tokenizer whose chat template renders the prompt of chat rows, if any.
    """

    format: str
    columns: dict
    template: str | None = None
    include_answer: bool = True
    chat_template: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def input_columns(self) -> list[str]:
        """The pool columns this rendering reads."""
        return list(self.columns["fields"]) if self.format == "template" else list(self.columns.values())


def resolve_render_options(
    column_names: list[str],
    *,
    format: str | None = None,
    text_column: str | None = None,
    template: str | None = None,
    include_answer: bool = True,
    tokenizer: Any = None,
) -> RenderOptions:
    """Work out which columns hold the prompt and answer, or say exactly how to tell us.

    Args:
        column_names (`list[str]`):
            The pool's columns.
        format (`str`, *optional*):
            Force a layout (see the module docstring); detected from the columns when `None`.
        text_column (`str`, *optional*):
            The column to read for `"text"` (or the chat column for `"messages"`).
        template (`str`, *optional*):
            A `str.format` template over the columns; implies `format="template"`.
        include_answer (`bool`, *optional*, defaults to `True`):
            Whether the answer is part of the text.
        tokenizer (`PreTrainedTokenizerBase`, *optional*):
            When given and it has a chat template, chat prompts are rendered with it.
    """
    names = list(column_names)
    chat_template = None
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        chat_template = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
    common = dict(include_answer=include_answer, chat_template=chat_template)

    if template is not None or format == "template":
        if not template:
            raise InvalidArgumentError("format='template' needs `template=`, e.g. template='{instruction}\\n{output}'.")
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
        missing = [f for f in fields if f not in names]
        if not fields or missing:
            raise InvalidArgumentError(
                f"`template` refers to columns {missing or '(none)'} that the pool does not have; "
                f"available columns: {names}."
            )
        return RenderOptions("template", {"fields": fields}, template=template, **common)

    if format is not None and format not in FORMATS:
        raise InvalidArgumentError(f"Unknown `format`={format!r}; choose one of {list(FORMATS)}.")

    if text_column is not None:
        if text_column not in names:
            raise InvalidArgumentError(
                f"`text_column`={text_column!r} is not a column of the pool; available columns: {names}."
            )
        fmt = format or "text"
        if fmt not in ("text", "messages"):
            raise InvalidArgumentError("`text_column` applies to format='text' or 'messages' only.")
        key = "text" if fmt == "text" else "messages"
        return RenderOptions(fmt, {key: text_column}, **common)

    for fmt, columns in _LAYOUTS:
        if format is not None and fmt != format:
            continue
        if all(c in names for c in columns.values()):
            columns = dict(columns)
            if fmt == "alpaca":
                extra = next((c for c in _ALPACA_INPUT_COLUMNS if c in names), None)
                if extra:
                    columns["input"] = extra
            return RenderOptions(fmt, columns, **common)

    wanted = format or "any supported layout"
    raise InvalidArgumentError(
        f"Cannot find the text to embed for {wanted} in columns {names}. Expected `messages`, "
        "`prompt`+`completion`, `question`+`answer`, `instruction`+`output`, or `text`; otherwise pass "
        "`text_column=` (one text column) or `template=` (e.g. '{title}\\n{body}')."
    )


def validate_columns(table: pa.Table, options: RenderOptions) -> None:
    """Check types and nulls of the columns `options` reads, on the Arrow table (no Python loop)."""
    for name in options.input_columns:
        column = table.column(name)
        if options.format == "messages" or (
            options.format == "prompt_completion" and pa.types.is_list(column.type)
        ):
            _validate_chat_column(name, column)
            continue
        # Templates may format numbers too; everything else must be text.
        numeric_ok = options.format == "template" and (
            pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
        )
        if not numeric_ok and not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            if pa.types.is_null(column.type):
                raise InvalidArgumentError(f"Column {name!r} is entirely None; every row needs text there.")
            raise InvalidArgumentError(
                f"Column {name!r} has type {column.type}, not text. Cast it to string or pass `template=`."
            )
        optional = options.format == "alpaca" and name == options.columns.get("input")
        if column.null_count and not optional:
            first = _first_null(column)
            raise InvalidArgumentError(
                f"Column {name!r} has {column.null_count} None value(s) (first at row {first}). "
                "Drop or fill those rows (e.g. `ds.filter(lambda r: r[...] is not None)`) before selecting."
            )


def _validate_chat_column(name: str, column: pa.ChunkedArray) -> None:
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        raise InvalidArgumentError(f"Chat column {name!r} has type {column.type}; expected a list of messages.")
    if column.null_count:
        raise InvalidArgumentError(
            f"Chat column {name!r} has {column.null_count} None value(s) (first at row {_first_null(column)})."
        )
    item = column.type.value_type
    if pa.types.is_null(item):
        raise InvalidArgumentError(f"Chat column {name!r} holds only empty conversations; every row needs messages.")
    if not pa.types.is_struct(item):
        raise InvalidArgumentError(f"Chat column {name!r} holds {item}, expected {{'role', 'content'}} dicts.")
    fields = {item.field(i).name for i in range(item.num_fields)}
    keys = next((k for k in _ROLE_KEYS if set(k) <= fields), None)
    if keys is None:
        raise InvalidArgumentError(
            f"Messages in {name!r} have keys {sorted(fields)}; expected 'role'/'content' (or 'from'/'value')."
        )
    lengths = pc.list_value_length(column)
    if pc.any(pc.equal(lengths, 0)).as_py():
        first = pc.index(lengths, 0).as_py()
        raise InvalidArgumentError(f"Chat column {name!r} has an empty conversation at row {first}.")
    flat = pc.list_flatten(column)
    content = pc.struct_field(flat, keys[1])
    if pa.types.is_null(content.type):
        raise InvalidArgumentError(f"Chat column {name!r}: every message's {keys[1]!r} is None; messages need text.")
    if not (pa.types.is_string(content.type) or pa.types.is_large_string(content.type)):
        raise InvalidArgumentError(f"Message {keys[1]!r} in {name!r} has type {content.type}, not text.")
    if content.null_count:
        raise InvalidArgumentError(
            f"Chat column {name!r} has {content.null_count} message(s) whose {keys[1]!r} is None. "
            "Fill or drop them before selecting."
        )


def _first_null(column: pa.ChunkedArray) -> int:
    return pc.index(pc.is_null(column), True).as_py()


def prompt_and_answer(row: dict, options: RenderOptions, tokenizer: Any = None) -> tuple[str, str]:
    """Render one row into `(prompt, answer)`; the answer is `""` when the layout has none."""
    fmt, cols = options.format, options.columns
    if fmt == "messages":
        return _split_chat(row[cols["messages"]], tokenizer if options.chat_template else None)
    if fmt == "prompt_completion":
        prompt, answer = row[cols["prompt"]], row[cols["answer"]]
        if isinstance(prompt, list):
            prompt = _chat_text(prompt, tokenizer if options.chat_template else None, add_generation_prompt=True)
        if isinstance(answer, list):
            answer = "\n".join(_content(m) for m in answer)
        return prompt, answer
    if fmt == "alpaca":
        prompt = row[cols["instruction"]]
        extra = row.get(cols["input"]) if "input" in cols else None
        if extra:
            prompt = f"{prompt}\n\n{extra}"
        return prompt, row[cols["answer"]]
    if fmt == "text":
        return row[cols["text"]], ""
    return options.template.format_map(row), ""


def render_batch(batch: dict[str, list], options: RenderOptions, tokenizer: Any = None) -> tuple[list, list]:
    """Render a `datasets` batch (dict of columns) into parallel lists of prompts and answers."""
    size = len(next(iter(batch.values())))
    prompts, answers = [], []
    for i in range(size):
        prompt, answer = prompt_and_answer({k: v[i] for k, v in batch.items()}, options, tokenizer)
        prompts.append(prompt)
        answers.append(answer if options.include_answer else "")
    return prompts, answers


def _content(message: dict) -> str:
    return message["content"] if "content" in message else message["value"]


def _role(message: dict) -> str:
    return message["role"] if "role" in message else message["from"]


def _split_chat(messages: list[dict], tokenizer: Any) -> tuple[str, str]:
    last = max((i for i, m in enumerate(messages) if _role(m) in _ASSISTANT_ROLES), default=None)
    if last is None:
        return _chat_text(messages, tokenizer, add_generation_prompt=False), ""
    return _chat_text(messages[:last], tokenizer, add_generation_prompt=True), _content(messages[last])


def _chat_text(messages: list[dict], tokenizer: Any, *, add_generation_prompt: bool) -> str:
    if not messages:
        return ""
    if tokenizer is None:
        # The encoder sees the turns' contents; role markers are the same in every row and add nothing.
        return "\n".join(_content(m) for m in messages)
    normalised = [{"role": _role(m), "content": _content(m)} for m in messages]
    return tokenizer.apply_chat_template(normalised, tokenize=False, add_generation_prompt=add_generation_prompt)


def token_lengths(dataset, options: RenderOptions, tokenizer: Any, *, cache_dir: str | None = None):
    """Tokens per row as the trainer will see them (chat template included), cached by fingerprint."""
    from datasets.fingerprint import Hasher

    from .cache import cached_map, fingerprint

    full = RenderOptions(options.format, options.columns, options.template, True, options.chat_template)
    chat = options.format == "messages" and getattr(tokenizer, "chat_template", None)

    def count(batch: dict) -> dict:
        if chat:
            column = batch[options.columns["messages"]]
            conversations = [[{"role": _role(m), "content": _content(m)} for m in conv] for conv in column]
            ids = tokenizer.apply_chat_template(conversations, tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) else ids
            return {"num_tokens": [len(x) for x in ids]}
        prompts, answers = render_batch(batch, full, tokenizer)
        encoded = tokenizer([p + a for p, a in zip(prompts, answers)], add_special_tokens=True)["input_ids"]
        return {"num_tokens": [len(x) for x in encoded]}

    key = fingerprint(dataset._fingerprint, Hasher.hash(tokenizer), full.to_dict(), "tokens")
    result = cached_map(
        dataset, count, kind="tokens", key=key, batch_size=1000, desc="Counting tokens",
        directory=cache_dir, input_columns=options.input_columns,
    )
    return np.asarray(result.data.table.column("num_tokens").to_numpy(), dtype=np.int64)


def _struct_keys(flat: pa.Array) -> tuple[str, str]:
    names = {flat.type.field(i).name for i in range(flat.type.num_fields)}
    return next(keys for keys in _ROLE_KEYS if set(keys) <= names)


def first_empty_answer(table: pa.Table, options: RenderOptions) -> int | None:
    """Row number of the first row whose rendered answer would be empty (Arrow only, no loop).

    Runs after `validate_columns`, so chat columns are non-null, non-empty lists of messages.
    """
    if options.format == "messages":
        column = table.column(options.columns["messages"]).combine_chunks()
        offsets = column.offsets.to_numpy()
        starts = offsets[:-1] - offsets[0]
        flat = column.flatten()
        role_key, content_key = _struct_keys(flat)
        lengths = pc.utf8_length(pc.struct_field(flat, content_key)).to_numpy(zero_copy_only=False)
        is_answer = pc.is_in(pc.struct_field(flat, role_key), value_set=pa.array(list(_ASSISTANT_ROLES)))
        is_answer = pc.fill_null(is_answer, False).to_numpy(zero_copy_only=False)
        # Index of each row's last assistant turn (-1 when it has none): a max over each row's turns.
        last = np.maximum.reduceat(np.where(is_answer, np.arange(len(is_answer)), -1), starts)
        empty = (last < 0) | (lengths[np.maximum(last, 0)] == 0)
    else:
        column = table.column(options.columns["answer"]).combine_chunks()
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            offsets = column.offsets.to_numpy()
            offsets = offsets - offsets[0]
            flat = column.flatten()
            lengths = pc.utf8_length(pc.struct_field(flat, _struct_keys(flat)[1])).to_numpy(zero_copy_only=False)
            # Turns are joined with "\n", so only a single empty turn renders to "".
            empty = np.add.reduceat(lengths, offsets[:-1]) + np.diff(offsets) - 1 == 0
        else:
            empty = pc.fill_null(pc.equal(pc.utf8_length(column), 0), False).to_numpy(zero_copy_only=False)
    hits = np.flatnonzero(empty)
    return int(hits[0]) if len(hits) else None
