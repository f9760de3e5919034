"""Every error hf_idsel raises on purpose, in one place.

Messages name the argument at fault and the fix. All errors derive from [`IdselError`], so
`except hf_idsel.IdselError` catches them; argument errors are also `ValueError`s.
"""


class IdselError(Exception):
    """Base class of hf_idsel's own errors."""


class InvalidArgumentError(IdselError, ValueError):
    """An argument (or the data it points at) cannot be used; raised before any expensive work."""


class SelectionMismatchError(IdselError):
    """A saved selection does not match the pool (or the manifest's own digest)."""


class MissingDependencyError(IdselError, ImportError):
    """An optional package needed for the requested feature is not installed."""


class MethodConflictError(IdselError, RuntimeError):
    """`datasets.Dataset` already has a `diverse_select` attribute that hf_idsel did not install."""
