"""hf_idsel: diversity-centric instruction data selection for Hugging Face datasets and TRL.

Implements "Diversify and Conquer" (Yu et al., arXiv 2409.11378): embed every instruction, cluster
with k-means, draw a diverse subset cluster by cluster (kMQ).

    import hf_idsel
    subset = pool.diverse_select(budget=1000)          # any datasets.Dataset
    subset = hf_idsel.diverse_select(pool, budget=0.1)  # the same, as a function
"""

import warnings

import datasets

from .errors import (
    IdselError,
    InvalidArgumentError,
    MethodConflictError,
    MissingDependencyError,
    PushError,
    SelectionMismatchError,
)
from .manifest import Manifest
from .pool import load_builtin_pool
from .load import load_selection
from .plan import SelectionPlan
from .select import diverse_select

__version__ = "0.1.0"

# torch/transformers/trl load only when these are first used: `import hf_idsel` stays light.
_LAZY = {
    "IterativeSelectionConfig": "config",
    "IterativeSelectionTrainer": "trainer",
    "CallableScorer": "scorers",
    "JudgeScorer": "scorers",
    "LikelihoodScorer": "scorers",
    "LossScorer": "scorers",
    "PerplexityScorer": "scorers",
    "RewardScorer": "scorers",
    "RoundScorer": "scorers",
    "TargetLossScorer": "scoring",
    "score_quality": "quality",
    "push_selection": "hub",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "CallableScorer",
    "IdselError",
    "IterativeSelectionConfig",
    "IterativeSelectionTrainer",
    "InvalidArgumentError",
    "JudgeScorer",
    "LikelihoodScorer",
    "LossScorer",
    "Manifest",
    "MethodConflictError",
    "MissingDependencyError",
    "PerplexityScorer",
    "PushError",
    "RewardScorer",
    "RoundScorer",
    "SelectionMismatchError",
    "SelectionPlan",
    "TargetLossScorer",
    "diverse_select",
    "install_dataset_method",
    "load_builtin_pool",
    "load_selection",
    "push_selection",
    "score_quality",
]


def _dataset_method(self, budget=None, **kwargs):
    return diverse_select(self, budget, **kwargs)


_dataset_method.__doc__ = diverse_select.__doc__
_dataset_method.__hf_idsel__ = True


def install_dataset_method() -> None:
    """Add `diverse_select` to `datasets.Dataset` and `DatasetDict`, unless someone else already did.

    Raises [`MethodConflictError`] when another package defined the method; `import hf_idsel`
    turns that into a warning so the function form keeps working.
    """
    for cls in (datasets.Dataset, datasets.DatasetDict):
        existing = getattr(cls, "diverse_select", None)
        if existing is not None and not getattr(existing, "__hf_idsel__", False):
            raise MethodConflictError(
                f"`{cls.__name__}.diverse_select` is already defined by {getattr(existing, '__module__', '?')}; "
                "hf_idsel will not overwrite it. Call `hf_idsel.diverse_select(dataset, ...)` instead, "
                "or uninstall the other package."
            )
        cls.diverse_select = _dataset_method


try:
    install_dataset_method()
except MethodConflictError as conflict:
    warnings.warn(str(conflict), RuntimeWarning, stacklevel=2)
