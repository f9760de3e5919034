"""Selection methods: one table, [`METHODS`], from a method name to how it draws rows.

`diverse_select(method=...)` looks the name up there after clustering. An entry says which function
draws a row budget, which `diverse_select` arguments it uses, how it orders rows for a token budget
(if it can) and which arguments it refuses. Adding a method is its draw function plus one entry; the
argument checks, the CLI's `--method` choices and `max_tokens` support follow from the entry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import baselines, sample
from .cluster import Clustering
from .errors import InvalidArgumentError


@dataclass(frozen=True)
class DrawInputs:
    """What a method draws from: the clustered pool, the rows it may take, and the seed.

    Args:
        embeddings (`np.ndarray`):
            `(n, d)` unit-norm vectors of the pool.
        clustering (`Clustering`):
            k-means over them (`labels`, `similarity` to the centroid, `k`).
        seed (`int`):
            Seeds the draw.
        quality (`np.ndarray`, *optional*):
            Per-row quality from `quality_column`; `None` for a method whose `options` leave it out.
        eligible (`np.ndarray`, *optional*):
            Boolean mask of the rows that may be drawn (de-duplication removes the others); `None` for all.
        sources (`np.ndarray`, *optional*):
            Each row's value of `source_column`; `None` for a method whose `options` leave it out.
    """

    embeddings: np.ndarray
    clustering: Clustering
    seed: int
    quality: np.ndarray | None = None
    eligible: np.ndarray | None = None
    sources: np.ndarray | None = None


@dataclass(frozen=True)
class Method:
    """One entry of [`METHODS`].

    Args:
        draw (`Callable`):
            `draw(inputs, rows, **options)` -> exactly `rows` distinct eligible pool rows, sorted.
        options (`tuple[str, ...]`, *optional*, defaults to `()`):
            The `diverse_select` arguments the method uses, passed to `draw` and `order` by name;
            `"quality_column"` instead lets the scores through in `inputs.quality`.
        order (`Callable`, *optional*):
            `order(inputs, **options)` -> every eligible row, in the order a growing budget takes them; a token
            budget (`max_tokens`) keeps the longest prefix that fits. Without it the method needs a row `budget`.
        check (`Callable`, *optional*):
            `check(args)` raises [`InvalidArgumentError`] for `SelectArguments` the method cannot work with;
            it runs with the other checks, before any encoder loads.
    """

    draw: Callable[..., np.ndarray]
    options: tuple[str, ...] = ()
    order: Callable[..., np.ndarray] | None = None
    check: Callable[[Any], None] | None = None


def _quota_draw(inputs: DrawInputs, rows: int, *, quality_temperature=1.0, quality_weighting="softmax", quota="proportional"):
    return sample.kmq_sample(
        inputs.clustering.labels,
        rows,
        k=inputs.clustering.k,
        seed=inputs.seed,
        quality=inputs.quality,
        temperature=quality_temperature,
        weighting=quality_weighting,
        eligible=inputs.eligible,
        quota=quota,
    )


def _quota_order(inputs: DrawInputs, *, quality_temperature=1.0, quality_weighting="softmax", quota="proportional"):
    labels = inputs.clustering.labels
    rng = np.random.default_rng(inputs.seed)
    key, tiebreak = sample.row_priorities(
        len(labels), rng, quality=inputs.quality, temperature=quality_temperature, weighting=quality_weighting
    )
    return sample.priority_order(labels, key, tiebreak, k=inputs.clustering.k, eligible=inputs.eligible, quota=quota)


def _closest_draw(inputs: DrawInputs, rows: int, *, quota="proportional"):
    # A row budget has always filled size-proportional quotas here whatever `quota` says; only the
    # token order honours it. Kept so that the same call keeps giving the same rows.
    clustering = inputs.clustering
    return sample.kmeans_closest(
        clustering.labels, clustering.similarity, rows, k=clustering.k, eligible=inputs.eligible
    )


def _closest_order(inputs: DrawInputs, *, quota="proportional"):
    clustering = inputs.clustering
    key, tiebreak = clustering.similarity.astype(np.float64), np.arange(len(clustering.labels))
    return sample.priority_order(
        clustering.labels, key, tiebreak, k=clustering.k, eligible=inputs.eligible, quota=quota
    )


def _random_draw(inputs: DrawInputs, rows: int):
    return sample.random_sample(len(inputs.embeddings), rows, seed=inputs.seed, eligible=inputs.eligible)


def _random_order(inputs: DrawInputs):
    return sample.random_order(len(inputs.embeddings), seed=inputs.seed, eligible=inputs.eligible)


def _balanced_random_draw(inputs: DrawInputs, rows: int):
    return baselines.balanced_random(inputs.sources, rows, seed=inputs.seed, eligible=inputs.eligible)


def _check_balanced_random(args) -> None:
    if args.source_column is None:
        raise InvalidArgumentError(
            "method='balanced-random' draws an equal share from each data source: pass `source_column=` "
            "(the column naming each row's source)."
        )


def _on_eligible_rows(inputs: DrawInputs, pick: Callable[[np.ndarray, np.ndarray | None], np.ndarray]):
    # The greedy baselines see the eligible rows only; their picks map back to pool rows.
    rows_map = np.arange(len(inputs.embeddings)) if inputs.eligible is None else np.flatnonzero(inputs.eligible)
    quality = None if inputs.quality is None else inputs.quality[rows_map]
    return np.sort(rows_map[pick(inputs.embeddings[rows_map], quality)])


def _kcenter_draw(inputs: DrawInputs, rows: int):
    return _on_eligible_rows(inputs, lambda x, _: baselines.kcenter_greedy(x, rows, seed=inputs.seed))


def _deita_draw(inputs: DrawInputs, rows: int, *, deita_threshold: float):
    return _on_eligible_rows(inputs, lambda x, q: baselines.deita_select(x, q, rows, threshold=deita_threshold))


def _check_deita(args) -> None:
    if args.quality_column is None:
        raise InvalidArgumentError(
            "method='deita' ranks rows by quality: pass `quality_column=` (e.g. after hf_idsel.score_quality(pool))."
        )


def _qdit_draw(inputs: DrawInputs, rows: int, *, qdit_alpha: float):
    def pick(x, q):
        if q is None:  # no scores: pure facility location
            return baselines.qdit_select(x, np.zeros(len(x)), rows, alpha=0.0)
        return baselines.qdit_select(x, q, rows, alpha=qdit_alpha)

    return _on_eligible_rows(inputs, pick)


# The order is that of the CLI's --method choices and of the error messages.
METHODS: dict[str, Method] = {
    "random": Method(draw=_random_draw, order=_random_order),
    # Random with an equal share per source: the fair random baseline.
    "balanced-random": Method(draw=_balanced_random_draw, options=("source_column",), check=_check_balanced_random),
    # kMQ's draw without the quality column: uniform inside each cluster.
    "kmeans-random": Method(draw=_quota_draw, order=_quota_order, options=("quota",)),
    "kmeans-closest": Method(draw=_closest_draw, order=_closest_order, options=("quota",)),
    "kmq": Method(
        draw=_quota_draw,
        order=_quota_order,
        options=("quality_column", "quality_temperature", "quality_weighting", "quota"),
    ),
    "kcenter": Method(draw=_kcenter_draw),
    "deita": Method(draw=_deita_draw, options=("quality_column", "deita_threshold"), check=_check_deita),
    "qdit": Method(draw=_qdit_draw, options=("quality_column", "qdit_alpha")),
}


def ordered_methods() -> list[str]:
    """The methods that order rows, which are those a token budget (`max_tokens`) works with."""
    return [name for name, method in METHODS.items() if method.order is not None]


def draw(inputs: DrawInputs, rows: int, args) -> np.ndarray:
    """The `rows` pool rows that `args.method` chooses, sorted."""
    method = METHODS[args.method]
    return method.draw(_visible_inputs(method, inputs), rows, **_options(method, args))


def token_order(inputs: DrawInputs, args) -> np.ndarray:
    """Every eligible row in the order `args.method` takes them for a growing budget."""
    method = METHODS[args.method]
    return method.order(_visible_inputs(method, inputs), **_options(method, args))


def _visible_inputs(method: Method, inputs: DrawInputs) -> DrawInputs:
    # kmeans-random ignores a quality column that de-duplication still uses: a method sees the scores
    # only when it lists them.
    return inputs if "quality_column" in method.options else dataclasses.replace(inputs, quality=None)


def _options(method: Method, args) -> dict:
    # Column names arrive as their values in `inputs`, not as keyword arguments.
    return args.pick(*(name for name in method.options if name not in ("quality_column", "source_column")))
