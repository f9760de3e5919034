"""Checks of single argument values, shared by `diverse_select`, `IterativeSelectionConfig` and `kmeans`.

Each refuses a bad value with an [`InvalidArgumentError`] that names the argument and says what it must be,
and returns the value as a plain Python object: faiss takes no numpy scalars, and manifests are JSON.
"""

from __future__ import annotations

import math
import numbers
import os
import sys

import numpy as np

from .errors import InvalidArgumentError


# faiss's k-means seed and iteration count are C ints.
MAX_INT32 = 2**31 - 1


def scalar(value):
    """`value`, or the one number a 0-dimensional numpy array holds (`np.array(3)` is `3`): numpy scalars and
    0-d arrays are accepted alike, arrays of any other shape are left for the checks to refuse."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    return value


def check_int(value, argument: str, *, minimum: int | None = None, maximum: int | None = None, fix: str = "") -> int:
    """`value` as an `int`, refusing bools, floats, strings and values outside `[minimum, maximum]`."""
    wanted = "an int" + _bounds(at_least=minimum, at_most=maximum)
    value = scalar(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentError(f"`{argument}`={short(value)} must be {wanted}, not {type(value).__name__}.{fix}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise InvalidArgumentError(f"`{argument}`={short(value)} must be {wanted}.{fix}")
    return value


def check_seed(value, argument: str = "seed") -> int:
    """A seed faiss's k-means (a 32-bit C int) and numpy both take: an int in [0, 2**31 - 1]."""
    fix = f" faiss's k-means takes a 32-bit seed: e.g. pass {argument} % 2**31."
    return check_int(value, argument, minimum=0, maximum=MAX_INT32, fix=fix)


def check_number(
    value,
    argument: str,
    *,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
    fix: str = "",
) -> float:
    """`value` as a Python number (an int stays an int), refusing bools, strings, NaN, infinities and values out
    of bounds."""
    wanted = "a finite number" + _bounds(above=above, at_least=at_least, at_most=at_most)
    value = scalar(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"`{argument}`={short(value)} must be {wanted}, not {type(value).__name__}.{fix}")
    try:
        number = float(value)
    except OverflowError:  # an int (or a fraction) past the float range: not finite
        number = math.inf
    if (
        not math.isfinite(number)
        or (above is not None and not number > above)
        or (at_least is not None and number < at_least)
        or (at_most is not None and number > at_most)
    ):
        raise InvalidArgumentError(f"`{argument}`={short(value)} must be {wanted}.{fix}")
    return value if type(value) in (int, float) else number


def check_flag(value, argument: str) -> bool:
    """A `bool` (numpy's included); a string such as `"false"` is refused, not read as true."""
    value = scalar(value)
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidArgumentError(f"`{argument}`={short(value)} must be True or False, not {type(value).__name__}.")
    return bool(value)


def check_name(value, argument: str, *, optional: bool = True) -> str | None:
    """A non-empty string (a column, a model id, a revision), or `None` when `optional`."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        wanted = "a non-empty string" + (" or None" if optional else "")
        raise InvalidArgumentError(f"`{argument}`={short(value)} must be {wanted}.")
    return value


def check_choice(value, argument: str, choices) -> str:
    """One of `choices` (strings)."""
    if not isinstance(value, str) or value not in choices:
        raise InvalidArgumentError(f"`{argument}`={short(value)}; choose one of {list(choices)}.")
    return value


def check_path(value, argument: str) -> str | os.PathLike | None:
    """A folder or file path (`str` or `os.PathLike`), or `None`."""
    if value is not None and not (isinstance(value, os.PathLike) or (isinstance(value, str) and value)):
        raise InvalidArgumentError(f"`{argument}`={short(value)} must be a path (a non-empty str or os.PathLike) or None.")
    return value


def check_model(value, argument: str, *, loaded: bool = True):
    """A model id or local path (a non-empty `str` or `os.PathLike`), or with `loaded`, a model object with `encode`."""
    if isinstance(value, (str, os.PathLike)) and os.fspath(value):
        return value
    if loaded and callable(getattr(value, "encode", None)) and not isinstance(value, (str, bytes)):
        return value
    raise InvalidArgumentError(
        f"`{argument}`={short(value)} must be a sentence-transformers model id or local path"
        + (" or a loaded SentenceTransformer." if loaded else ".")
    )


def check_device(value, argument: str = "device"):
    """`None`, a device name such as `"cuda:0"`, or a `torch.device` (torch is not imported for this)."""
    torch = sys.modules.get("torch")
    if value is None or (isinstance(value, str) and value) or (torch is not None and isinstance(value, torch.device)):
        return value
    raise InvalidArgumentError(f"`{argument}`={short(value)} must be a device name such as 'cpu' or 'cuda:0', or None.")


def check_tokenizer(value, argument: str = "tokenizer"):
    """`None` or a loaded transformers tokenizer (not imported for this: a tokenizer object implies transformers)."""
    transformers = sys.modules.get("transformers")
    if value is None or (transformers is not None and isinstance(value, transformers.PreTrainedTokenizerBase)):
        return value
    raise InvalidArgumentError(
        f"`{argument}` must be a loaded tokenizer, got {type(value).__name__} ({short(value)}): pass "
        "transformers.AutoTokenizer.from_pretrained(name)."
    )


def short(value, limit: int = 80) -> str:
    """`repr(value)` on one line, cut to `limit` characters: an error quotes a hostile value without printing it all
    (an int of 400 digits, a template of a million characters)."""
    try:
        text = " ".join(repr(value).split())
    except ValueError:  # an int past Python's digit limit for str()
        return f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def _bounds(*, above=None, at_least=None, at_most=None) -> str:
    low = f"({above}" if above is not None else f"[{at_least}" if at_least is not None else None
    if low is not None and at_most is not None:
        return f" in {low}, {at_most}]"
    if low is not None:
        return f" > {above}" if above is not None else f" >= {at_least}"
    return f" <= {at_most}" if at_most is not None else ""
