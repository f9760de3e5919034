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

import dataclasses
import functools
import re
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
_USER_ROLES = ("user", "human")
_ASSISTANT_ROLES = ("assistant", "gpt", "model", "bot")

# Bounds of a `template`, so that no template (neither a caller's nor one a manifest replays) renders a row into
# unbounded text: a rendered row is at most the template's literal text plus, per field, the column's value or the
# field's width. A template over a row's columns needs a few fields and a short text; `{x:>20000000}` is refused.
MAX_TEMPLATE_LENGTH = 10_000
MAX_TEMPLATE_FIELDS = 64
MAX_FORMAT_WIDTH = 1_000  # width and precision of one field's format spec
# The standard format-spec mini-language: [[fill]align][sign][z][#][0][width][grouping][.precision][type].
_FORMAT_SPEC = re.compile(
    r"(?:.?[<>=^])?[-+ ]?z?#?0?(?P<width>\d+)?[,_]?(?:\.(?P<precision>\d+))?[bcdeEfFgGnosxX%]?", re.DOTALL
)


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
        chat_template_digest (`str`, *optional*):
            Fingerprint of that chat template's text and the special tokens it can use, so that
            editing the template changes every cache key (the name alone stays the same).
    """

    format: str
    columns: dict
    template: str | None = None
    include_answer: bool = True
    chat_template: str | None = None
    chat_template_digest: str | None = None

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
    chat_template = digest = None
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        chat_template = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
        digest = chat_template_digest(tokenizer)
    common = dict(include_answer=include_answer, chat_template=chat_template, chat_template_digest=digest)

    if template is not None or format == "template":
        if not template:
            raise InvalidArgumentError("format='template' needs `template=`, e.g. template='{instruction}\\n{output}'.")
        fields = [name for name, _, _ in template_fields(template)]
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


def template_fields(template, argument: str = "template") -> list[tuple[str, str | None, str]]:
    """The replacement fields of a `str.format` template, `(column, conversion, format_spec)` each, checked before any
    row is rendered: valid syntax (a literal brace is written `{{` or `}}`), fields that name a column (no positional
    `{}`, attribute or index access), a standard format spec without nested fields, and the bounds
    [`MAX_TEMPLATE_LENGTH`], [`MAX_TEMPLATE_FIELDS`] and [`MAX_FORMAT_WIDTH`].

    Raises:
        [`InvalidArgumentError`]: naming `argument` and what to change.
    """
    from .checks import short

    def refuse(why: str):
        raise InvalidArgumentError(f"`{argument}`={short(template)}: {why}")

    if not isinstance(template, str) or not template:
        refuse("it must be a non-empty str.format template over the pool's columns, e.g. '{title}\\n{body}'.")
    if len(template) > MAX_TEMPLATE_LENGTH:
        refuse(f"it is {len(template)} characters long; a template may have at most {MAX_TEMPLATE_LENGTH}.")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:
        refuse(f"not a str.format template ({err}). Write a literal brace as '{{{{' or '}}}}'.")
    fields = [(name, conversion, spec) for _, name, spec, conversion in parts if name is not None]
    if len(fields) > MAX_TEMPLATE_FIELDS:
        refuse(f"it has {len(fields)} replacement fields; a template may have at most {MAX_TEMPLATE_FIELDS}.")
    for name, conversion, spec in fields:
        if not name.strip() or name.isdecimal():
            refuse(f"the field {{{name}}} names no column; name one, e.g. '{{text}}'.")
        if "." in name or "[" in name:
            refuse(f"the field {{{name}}} reads an attribute or an item; a field names a column, e.g. '{{text}}'.")
        if conversion not in (None, "r", "s", "a"):
            refuse(f"the field {{{name}!{conversion}}} has an unknown conversion; use !s, !r or !a, or none.")
        if "{" in spec or "}" in spec:
            refuse(f"the format spec of {{{name}}} holds a replacement field; write the width into the template.")
        match = _FORMAT_SPEC.fullmatch(spec)
        if match is None:
            refuse(f"{spec!r}, the format spec of {{{name}}}, is not a standard format spec (e.g. '>8' or '.3f').")
        for part in ("width", "precision"):
            if match.group(part) is not None and int(match.group(part)) > MAX_FORMAT_WIDTH:
                refuse(f"the {part} of {{{name}}} is {match.group(part)}; a template's widths and precisions are at most {MAX_FORMAT_WIDTH}.")
    return fields


def _check_template_types(table: pa.Table, template: str) -> None:
    """Each field's format spec against its column's type (a string column cannot take `{x:d}`), on a value of that
    type: refused before any row is rendered, not in the middle of the embedding."""
    examples = {"string": "x", "integer": 0, "floating": 0.0}
    for name, conversion, spec in template_fields(template):
        kind = table.column(name).type
        value = examples["integer" if pa.types.is_integer(kind) else "floating" if pa.types.is_floating(kind) else "string"]
        try:
            format(value if conversion is None else repr(value), spec)
        except ValueError as err:
            raise InvalidArgumentError(
                f"`template`: the field {{{name}:{spec}}} cannot format the column {name!r} ({kind}): {err}."
            ) from None


def chat_template_digest(tokenizer: Any) -> str:
    """Fingerprint of what `tokenizer.apply_chat_template` renders with: the template's text and the
    special tokens passed to it."""
    from datasets.fingerprint import Hasher

    return Hasher.hash([tokenizer.chat_template, getattr(tokenizer, "special_tokens_map", None)])


def validate_columns(table: pa.Table, options: RenderOptions) -> None:
    """Check types and nulls of the columns `options` reads, on the Arrow table (no Python loop)."""
    for name in options.input_columns:
        column = table.column(name)
        optional = options.format == "alpaca" and name == options.columns.get("input")
        if optional and pa.types.is_null(column.type):
            continue  # an optional `input` column that is None in every row: no row has an input
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
        if column.null_count and not optional:
            first = _first_null(column)
            raise InvalidArgumentError(
                f"Column {name!r} has {column.null_count} None value(s) (first at row {first}). "
                "Drop or fill those rows (e.g. `ds.filter(lambda r: r[...] is not None)`) before selecting."
            )
    if options.format == "template":
        _check_template_types(table, options.template)


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


def _answer_turn(messages: list[dict]) -> int | None:
    """Index of a chat's gold answer, its last assistant turn (`None` without one)."""
    return max((i for i, m in enumerate(messages) if _role(m) in _ASSISTANT_ROLES), default=None)


def _split_chat(messages: list[dict], tokenizer: Any) -> tuple[str, str]:
    last = _answer_turn(messages)
    if last is None:
        return _chat_text(messages, tokenizer, add_generation_prompt=False), ""
    return _chat_text(messages[:last], tokenizer, add_generation_prompt=True), _content(messages[last])


def _chat_text(messages: list[dict], tokenizer: Any, *, add_generation_prompt: bool) -> str:
    if not messages:
        return ""
    if tokenizer is None:
        # The encoder sees the turns' contents; role markers are the same in every row and add nothing.
        return "\n".join(_content(m) for m in messages)
    # ShareGPT roles as the trainer passes them (`human` -> `user`): strict templates refuse other roles.
    normalised = [{"role": t["role"], "content": t["content"]} for t in chatml_turns(messages)]
    return tokenizer.apply_chat_template(normalised, tokenize=False, add_generation_prompt=add_generation_prompt)


def prompt_turns(row: dict, options: RenderOptions) -> list[dict]:
    """The prompt of a chat or prompt/completion row as `role`/`content` turns ([`chatml_turns`]), for a model that
    applies its own chat template: the messages before the gold answer [`prompt_and_answer`] reads, or the prompt
    column (one user turn when it is a string)."""
    cols = options.columns
    if options.format == "messages":
        messages = row[cols["messages"]]
        last = _answer_turn(messages)
        return chatml_turns(messages if last is None else messages[:last])
    prompt = row[cols["prompt"]]
    return chatml_turns(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]


def chatml_turns(messages: list[dict]) -> list[dict]:
    """Turns as hf_idsel's trainer passes them to TRL: `role`/`content` messages as they are (other keys,
    such as tool calls, included); ShareGPT turns (`from`/`value`) as `role`/`content` with lower-case
    roles, `human` -> `user` and `gpt`/`model`/`bot` -> `assistant`."""
    if not messages or "role" in messages[0]:
        return [dict(m) for m in messages]
    turns = []
    for message in messages:
        speaker = str(message["from"]).lower()
        role = "user" if speaker in _USER_ROLES else "assistant" if speaker in _ASSISTANT_ROLES else speaker
        turns.append({"role": role, "content": message["value"]})
    return turns


def training_input(row: dict, options: RenderOptions, *, chat: bool) -> list[dict] | str:
    """A pool row as TRL's `SFTTrainer` tokenizes it after hf_idsel's `to_trainable_rows`.

    - Chat rows (`messages`, or `prompt`/`completion` given as messages): the whole conversation,
      which SFTTrainer renders with the chat template.
    - Other prompt/answer pairs (Alpaca, `prompt`/`response`, `question`/`answer`) become a user and an
      assistant turn when `chat` (the tokenizer has a chat template), as hf_idsel's trainer makes them.
    - Everything else is one text: `prompt + completion` for string `prompt`/`completion` columns (as
      SFTTrainer joins them), the prompt and answer of a pair without a chat template, the text or
      the filled `template`. SFTTrainer appends EOS to such texts ([`count_tokens`] does).
    """
    fmt, cols = options.format, options.columns
    if fmt == "messages":
        return chatml_turns(row[cols["messages"]])
    if fmt == "prompt_completion":
        prompt, answer = row[cols["prompt"]], row[cols["answer"]]
        if isinstance(prompt, list) or isinstance(answer, list):
            return _turns(prompt, "user") + _turns(answer, "assistant")
        if cols["answer"] == "completion":  # SFTTrainer reads string `prompt`/`completion` columns as they are
            return prompt + answer
    prompt, answer = prompt_and_answer(row, dataclasses.replace(options, chat_template=None))
    if chat and fmt in ("prompt_completion", "alpaca"):
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer or ""}]
    return prompt + answer


def _turns(side: list[dict] | str, role: str) -> list[dict]:
    return chatml_turns(side) if isinstance(side, list) else [{"role": role, "content": side}]


def count_tokens(batch: dict[str, list], options: RenderOptions, tokenizer: Any) -> list[int]:
    """Tokens of each row of a batch as TRL's `SFTTrainer` produces them (see [`training_input`]):
    a conversation through `apply_chat_template(..., tokenize=True, return_dict=True)`, a text with
    EOS appended (unless it already ends with it) through the tokenizer, special tokens included."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    size = len(next(iter(batch.values())))
    inputs = [training_input({k: v[i] for k, v in batch.items()}, options, chat=chat) for i in range(size)]
    counts = [0] * size
    conversations = [i for i, x in enumerate(inputs) if isinstance(x, list)]
    if conversations:
        # transformers >= 5 returns a BatchEncoding here (a Mapping, not a dict): read its input_ids.
        encoded = tokenizer.apply_chat_template([inputs[i] for i in conversations], tokenize=True, return_dict=True)
        for i, ids in zip(conversations, encoded["input_ids"]):
            counts[i] = len(ids)
    texts = [i for i, x in enumerate(inputs) if not isinstance(x, list)]
    if texts:
        eos = getattr(tokenizer, "eos_token", None)
        strings = [inputs[i] if eos is None or inputs[i].endswith(eos) else inputs[i] + eos for i in texts]
        for i, ids in zip(texts, tokenizer(strings)["input_ids"]):
            counts[i] = len(ids)
    return counts


def check_countable(table: pa.Table, options: RenderOptions, tokenizer: Any) -> None:
    """Refuse to count tokens of conversations with a tokenizer that has no chat template: SFTTrainer
    cannot render them without one, so there is no true count to give."""
    if getattr(tokenizer, "chat_template", None):
        return
    chat_columns = [
        name for name in options.input_columns
        if options.format == "messages" or (
            options.format == "prompt_completion"
            and (pa.types.is_list(table.schema.field(name).type) or pa.types.is_large_list(table.schema.field(name).type))
        )
    ]
    if chat_columns:
        name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
        raise InvalidArgumentError(
            f"`tokenizer` ({name!r}) has no chat template, but the pool's rows are conversations (column "
            f"{chat_columns[0]!r}): TRL's SFTTrainer renders them with the chat template, so their tokens cannot be "
            "counted without it. Pass the tokenizer you will train with, its chat template set "
            "(e.g. `tokenizer.chat_template = open('template.jinja').read()`)."
        )


def token_lengths(
    dataset, options: RenderOptions, tokenizer: Any, *, cache_dir: str | None = None, **map_kwargs
) -> np.ndarray:
    """Tokens per row as TRL's `SFTTrainer` will see them (see [`count_tokens`]), cached by fingerprint.

    Counts are of whole rows before any truncation (`max_length`) or packing, whatever `include_answer`
    says for embedding: the trainer trains on the answer too.

    Args:
        dataset (`datasets.Dataset`):
            The pool, already checked with [`validate_columns`].
        options ([`RenderOptions`]):
            How its rows are laid out.
        tokenizer (`PreTrainedTokenizerBase`):
            The tokenizer (and chat template) the model will be trained with.
        cache_dir (`str`, *optional*):
            Cache folder; defaults to `HF_DATASETS_CACHE/hf_idsel`.
        map_kwargs:
            `desc`, `num_proc`, `load_from_cache_file`, `keep_in_memory`, as in `datasets.Dataset.map`.

    Returns:
        `np.ndarray`: one int64 count per row.
    """
    from datasets.fingerprint import Hasher

    from .cache import cached_map, fingerprint

    check_countable(dataset.data.table, options, tokenizer)
    full = dataclasses.replace(options, include_answer=True)
    # The tokenizer's hash covers its vocabulary, special tokens and chat template; the template and
    # EOS are named too, since they decide the count. "sft" versions the counting rule.
    key = fingerprint(
        dataset._fingerprint, "tokens-sft", Hasher.hash(tokenizer), getattr(tokenizer, "chat_template", None),
        getattr(tokenizer, "eos_token", None), full.to_dict(),
    )
    desc = " ".join(filter(None, (map_kwargs.pop("desc", None), "Counting tokens")))
    result = cached_map(
        dataset, functools.partial(_count_batch, options=full, tokenizer=tokenizer), kind="tokens", key=key,
        batch_size=1000, desc=desc, directory=cache_dir, input_columns=options.input_columns,
        check=_token_count_problem, **map_kwargs,
    )
    return np.asarray(result.data.table.column("num_tokens").to_numpy(), dtype=np.int64)


def _count_batch(batch: dict, *, options: RenderOptions, tokenizer: Any) -> dict:
    # A module-level function (not a lambda), so that `num_proc` processes can receive it.
    return {"num_tokens": count_tokens(batch, options, tokenizer)}


def _token_count_problem(table: pa.Table) -> str | None:
    if "num_tokens" not in table.column_names or not pa.types.is_integer(table.schema.field("num_tokens").type):
        return "it has no integer 'num_tokens' column"
    column = table.column("num_tokens")
    if column.null_count or (len(column) and pc.min(column).as_py() < 0):
        return "it holds missing or negative counts"
    return None


def _struct_keys(flat: pa.Array) -> tuple[str, str]:
    names = {flat.type.field(i).name for i in range(flat.type.num_fields)}
    return next(keys for keys in _ROLE_KEYS if set(keys) <= names)


def _chat_turns(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """`(turns, row of each turn, each row's last assistant turn or -1)` of a chat column, without a loop."""
    column = column.combine_chunks()
    offsets = column.offsets.to_numpy()
    turns = column.flatten()
    row = np.repeat(np.arange(len(column)), np.diff(offsets))
    role_key, _ = _struct_keys(turns)
    is_answer = pc.is_in(pc.struct_field(turns, role_key), value_set=pa.array(list(_ASSISTANT_ROLES)))
    is_answer = pc.fill_null(is_answer, False).to_numpy(zero_copy_only=False)
    last = np.full(len(column), -1)
    np.maximum.at(last, row, np.where(is_answer, np.arange(len(turns)), -1))
    return turns, row, last


def _blank(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Per value: no text (None, empty or whitespace only). Numbers are never blank."""
    if pa.types.is_null(values.type):
        return np.ones(len(values), dtype=bool)
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        turns, row, _ = _chat_turns(values)
        return ~_any_per_row(~_blank(pc.struct_field(turns, _struct_keys(turns)[1])), row, len(values))
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return np.zeros(len(values), dtype=bool)
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(values)), 0)
    return pc.fill_null(empty, True).to_numpy(zero_copy_only=False)


def _any_per_row(flags: np.ndarray, row: np.ndarray, rows: int) -> np.ndarray:
    hits = np.zeros(rows, dtype=bool)
    hits[row[flags]] = True
    return hits


def check_text_to_embed(table: pa.Table, options: RenderOptions) -> None:
    """Refuse rows with nothing to embed: every column (or chat turn) the encoder reads is empty or whitespace.

    Such rows would all get the same meaningless vector and cluster together. Runs on the Arrow
    data, before any encoder loads; a chat template's markup does not count as text.

    Raises:
        [`InvalidArgumentError`]: naming the column(s), the first such row and how to drop them.
    """
    fmt, cols = options.format, options.columns
    if fmt == "messages":
        names = [cols["messages"]]
        turns, row, last = _chat_turns(table.column(names[0]))
        turn, last = np.arange(len(turns)), last[row]
        # As `_split_chat` renders: the turns before the last assistant turn (all when there is none),
        # and that turn itself when the answer is embedded.
        embedded = (last < 0) | (turn < last) | (options.include_answer & (turn == last))
        text = ~_blank(pc.struct_field(turns, _struct_keys(turns)[1]))
        blank = ~_any_per_row(text & embedded, row, table.num_rows)
    else:
        if fmt == "template":
            names = list(cols["fields"])
        elif fmt == "text":
            names = [cols["text"]]
        else:
            prompt = [cols["instruction"], cols.get("input")] if fmt == "alpaca" else [cols["prompt"]]
            names = [c for c in prompt if c] + ([cols["answer"]] if options.include_answer else [])
        blank = np.ones(table.num_rows, dtype=bool)
        for name in names:
            blank &= _blank(table.column(name))
    hits = np.flatnonzero(blank)
    if not len(hits):
        return
    has_text = " or ".join(filter(None, (_has_text_expression(table.column(n).type, n) for n in names)))
    where = f"column {names[0]!r} is" if len(names) == 1 else f"columns {names} are all"
    raise InvalidArgumentError(
        f"{len(hits)} row(s) have no text to embed: {where} empty or whitespace there (first: row {int(hits[0])}). "
        f"Drop them before selecting, e.g. `pool = pool.filter(lambda row: {has_text})`."
    )


def _has_text_expression(arrow_type: pa.DataType, name: str) -> str | None:
    """Python source of a `filter` condition that is true when column `name` of `row` has text."""
    if pa.types.is_null(arrow_type):
        return None
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        fields = {arrow_type.value_type.field(i).name for i in range(arrow_type.value_type.num_fields)}
        content = next(keys for keys in _ROLE_KEYS if set(keys) <= fields)[1]
        return f"any((m[{content!r}] or '').strip() for m in row[{name!r}])"
    return f"str(row[{name!r}] or '').strip()"


def first_empty_answer(table: pa.Table, options: RenderOptions) -> int | None:
    """Row number of the first row whose rendered answer would be empty (Arrow only, no loop).

    Runs after `validate_columns`, so chat columns are non-null, non-empty lists of messages.
    """
    if options.format == "messages":
        turns, _, last = _chat_turns(table.column(options.columns["messages"]))
        lengths = pc.utf8_length(pc.struct_field(turns, _struct_keys(turns)[1])).to_numpy(zero_copy_only=False)
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


def training_render_options(pool, *, scorer: str, gold_needed: bool) -> RenderOptions:
    """How `IterativeSelectionTrainer` reads `pool`: chat `messages` or `prompt`/`completion` rows, with a
    non-empty gold answer in every row when the scorer (`gold_needed`) compares it with the model's own."""
    options = resolve_render_options(pool.column_names, format=None, include_answer=True)
    if options.format not in ("messages", "prompt_completion"):
        raise InvalidArgumentError(
            "IterativeSelectionTrainer needs chat `messages` or `prompt`/`completion` rows (a gold answer per row); "
            f"this pool renders as format={options.format!r}."
        )
    validate_columns(pool.data.table, options)
    empty = first_empty_answer(pool.data.table, options) if gold_needed else None
    if empty is not None:
        raise InvalidArgumentError(
            f"scorer={scorer!r} compares the gold answer with the model's own, but pool row {empty} has no gold "
            "completion (no assistant turn or an empty one). Drop such rows or use scorer='loss'."
        )
    return options

