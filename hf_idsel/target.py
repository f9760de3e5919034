"""Selecting for a target: spend the budget where a few examples of the user's own tasks lie in the pool.

`diverse_select(pool, budget, target_dataset=examples)` (or `target=examples`) embeds the target examples with the
selection's own encoder (cached like the pool's vectors), then draws the budget one of two ways (`target_method`):

- `"kmq"` (the default): kMQ whose cluster quotas are proportional to `size_j x affinity_j ** target_sharpness`, exact
  (largest remainder, a full cluster's share re-shared), with the quality-weighted draw inside each cluster unchanged.
  The **affinity** of cluster j is the mean, over the target examples, of the cosine similarity between the cluster's
  centroid and the example's vector, clipped at 0 (with `target_task_column`, the mean over tasks of each task's
  mean, so that every task pulls equally whatever its number of examples):

      affinity_j = mean_tasks mean_{t in task} max(0, cos(centroid_j, t))      in [0, 1]

  Why this definition: the quota is a property of the cluster, and the centroid is what the cluster is (k x m
  products, nothing per row, so it costs the same on any pool); a mean over the examples is not moved by one stray
  example the way a max would be, and a cluster near several examples ranks above one near a single one; clipping
  keeps an anti-correlated cluster at weight 0 instead of a negative one. `target_sharpness` s sets the contrast: two
  clusters of one size get quotas in the ratio `(a_1 / a_2) ** s`; s = 0 is plain kMQ. What the default s = 4 does
  on the built-in pool (share of the budget from the target's source, held-out loss) is measured in docs/fidelity.md,
  "Selecting for a target".
- `"rds"`: RDS+ (Ivison et al., arXiv 2503.01807) as published: the cosine of every pool row to every target
  example; the target examples take turns (round-robin, in the target's order), each taking its most similar row not
  yet taken; with `target_task_column`, the tasks take turns too (task A's next example, task B's next example, ...),
  so each task gets an equal share of the budget. Ties go to the lower pool row. The research code's loop differs in
  one detail: there, a turn that pops a row already taken is spent; here the example takes its next row.
  Memory-bounded: the pool is read in blocks and only each example's best candidates are kept ([`rds_order`]).

A target item that is also an item of `exclude_dataset` (the test set) is refused before anything is embedded
([`check_target`]): the target is what to aim at, never the items the model is measured on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from . import checks, sample
from .decontaminate import as_dataset, exclude_render_options, words
from .errors import InvalidArgumentError
from .render import RenderOptions, check_text_to_embed, prompt_and_answer, resolve_render_options, validate_columns

logger = logging.getLogger(__name__)

TARGET_METHODS = ("kmq", "rds")
DEFAULT_TARGET_SHARPNESS = 4.0
# Pool rows x target examples per block of the RDS product (float32): bounds its memory at about 8 MB.
_PAIRS_PER_BLOCK = 2_000_000
_DIGEST_BATCH = 1000


def as_target_dataset(target, argument: str = "target_dataset") -> datasets.Dataset:
    """`target` as a Dataset: a Dataset as it is (views materialised), a list of strings as a `text` column."""
    if isinstance(target, datasets.Dataset):
        if len(target) == 0:
            raise InvalidArgumentError(f"`{argument}` is empty: pass a few examples of the tasks to select for.")
        return target.flatten_indices() if target._indices is not None else target
    if isinstance(target, (list, tuple)) and target and all(isinstance(t, str) and t.strip() for t in target):
        return datasets.Dataset.from_dict({"text": list(target)})
    empty = " (empty)" if isinstance(target, (list, tuple)) and not target else ""
    raise InvalidArgumentError(
        f"`{argument}` must be a datasets.Dataset (examples of the tasks to select for, in any layout the pool may "
        f"have) or a non-empty list of non-blank strings, got {type(target).__name__}{empty}."
    )


def target_render_options(target: datasets.Dataset, pool_render: RenderOptions | None, *, include_answer: bool = True):
    """How target rows become text: the pool's own rendering when the target has the pool's columns (the same layout,
    template or chat template included), else the layout detected from the target's columns, with the pool's
    `include_answer`. `None` for a target without text next to a pool without text (vectors only)."""
    if pool_render is not None and all(c in target.column_names for c in pool_render.input_columns):
        return pool_render
    try:
        return resolve_render_options(target.column_names, include_answer=include_answer)
    except InvalidArgumentError as err:
        if pool_render is None:
            return None
        raise InvalidArgumentError(
            f"`target_dataset`: {err} Pass the target in the pool's layout (columns {pool_render.input_columns}), in "
            "another layout hf_idsel reads, or as a list of strings."
        ) from None


def target_tasks(target: datasets.Dataset, task_column: str | None) -> np.ndarray | None:
    """Each target example's task (`task_column`'s values), or `None` without a task column."""
    if task_column is None:
        return None
    if task_column not in target.column_names:
        raise InvalidArgumentError(
            f"`target_task_column`={task_column!r} is not a column of `target_dataset`; available: {target.column_names}."
        )
    column = target.data.table.column(task_column)
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)):
        raise InvalidArgumentError(
            f"`target_task_column`={task_column!r} holds {column.type}; it must name each example's task as a string or int."
        )
    if column.null_count:
        raise InvalidArgumentError(f"`target_task_column`={task_column!r} has {column.null_count} missing values.")
    return np.asarray(column.cast(kind).to_pylist() if kind != column.type else column.to_pylist(), dtype=object)


def check_settings(method: str, sharpness, task_column, *, quality_column=None, quota: str = "proportional") -> None:
    """The target's settings, without the data: refused before anything is loaded."""
    checks.check_choice(method, "target_method", TARGET_METHODS)
    checks.check_number(sharpness, "target_sharpness", at_least=0, fix=" 0 is plain kMQ; the default is 4.")
    checks.check_name(task_column, "target_task_column")
    if method == "rds" and quality_column is not None:
        raise InvalidArgumentError(
            "target_method='rds' ranks rows by their similarity to the target alone and reads no quality column: drop "
            "`quality_column`, or use target_method='kmq', which draws inside each cluster by quality."
        )
    if method == "rds" and quota != "proportional":
        raise InvalidArgumentError(
            f"target_method='rds' takes rows round-robin over the target examples and has no cluster quotas: drop "
            f"`quota`={quota!r}, or use target_method='kmq'."
        )


def check_target(
    target, *, pool_render: RenderOptions | None, include_answer: bool, task_column: str | None,
    embedding_column: str | None, exclude=None, exclude_options: RenderOptions | None = None,
) -> datasets.Dataset:
    """Refuse a target that cannot be embedded as the pool is, or that shares an item with the test set `exclude`,
    before any encoder loads; returns it as a Dataset.

    An overlap is an exact match after normalisation (lower case, punctuation and whitespace dropped: the
    decontamination's [`~decontaminate.words`]) of a target item's prompt, or of its prompt and answer, with an
    `exclude` item's prompt, or its prompt and answer.
    """
    target = as_target_dataset(target)
    options = target_render_options(target, pool_render, include_answer=include_answer)
    if options is not None:
        validate_columns(target.data.table, options)
        if embedding_column is None:
            check_text_to_embed(target.data.table, options)
    if embedding_column is not None and embedding_column not in target.column_names:
        raise InvalidArgumentError(
            f"`target_dataset` lacks the vector column `embedding_column`={embedding_column!r} of the pool: the selection "
            "has no encoder to embed it with. Give the target vectors from the same encoder in that column."
        )
    if options is None and exclude is not None:
        raise InvalidArgumentError("`target_dataset` has no text layout, so it cannot be checked against `exclude_dataset`.")
    target_tasks(target, task_column)
    if exclude is not None:
        overlap = shared_items(target, options, exclude, exclude_options)
        if overlap:
            t, e = overlap[0]
            raise InvalidArgumentError(
                f"{len(overlap)} item(s) of `target_dataset` are also items of `exclude_dataset`, the evaluation set (first: "
                f"target row {t} = evaluation item {e}): the target says what to aim at and must not be the test set. "
                "Take the target examples from the task's training or development split, or drop those rows."
            )
    return target


def item_texts(dataset: datasets.Dataset, options: RenderOptions) -> list[tuple[str, ...]]:
    """Each row's normalised prompt and prompt + answer (without chat template), the keys of [`shared_items`]."""
    plain = replace(options, chat_template=None, chat_template_digest=None)
    texts = []
    for batch in dataset.select_columns(plain.input_columns).iter(batch_size=1000):
        size = len(next(iter(batch.values())))
        for i in range(size):
            prompt, answer = prompt_and_answer({k: v[i] for k, v in batch.items()}, plain)
            keys = {" ".join(words(prompt)), " ".join(words(f"{prompt} {answer}"))}
            texts.append(tuple(key for key in keys if key))
    return texts


def shared_items(target: datasets.Dataset, options: RenderOptions, exclude: datasets.Dataset, exclude_options: RenderOptions):
    """`(target row, exclude row)` pairs whose normalised texts match (see [`check_target`]), by target row."""
    seen = {}
    for row, keys in enumerate(item_texts(exclude, exclude_options)):
        for key in keys:
            seen.setdefault(key, row)
    pairs = []
    for row, keys in enumerate(item_texts(target, options)):
        match = next((seen[key] for key in keys if key in seen), None)
        if match is not None:
            pairs.append((row, match))
    return pairs


def target_digest(target: datasets.Dataset) -> str:
    """sha256 of the target's content: every column's values, in row order, with the row count."""
    digest = hashlib.sha256(json.dumps({"rows": len(target), "columns": sorted(target.column_names)}).encode())
    table = target.data.table
    for name in sorted(target.column_names):
        for start in range(0, len(target), _DIGEST_BATCH):
            values = table.column(name).slice(start, _DIGEST_BATCH).to_pylist()
            digest.update(json.dumps(values, sort_keys=True, ensure_ascii=False, default=str).encode())
    return "sha256:" + digest.hexdigest()


def cluster_affinity(centroids: np.ndarray, target_vectors: np.ndarray, tasks: np.ndarray | None = None) -> np.ndarray:
    """Each cluster's affinity to the target, in [0, 1]: the mean over target examples (over tasks of each task's mean,
    with `tasks`) of `max(0, cos(centroid, example))` (see the module docstring)."""
    centroids = _unit(np.asarray(centroids, dtype=np.float32))
    cosine = np.clip(centroids @ _unit(np.asarray(target_vectors, dtype=np.float32)).T, 0.0, 1.0).astype(np.float64)
    if tasks is None:
        return cosine.mean(axis=1)
    groups = _task_groups(tasks)
    return np.mean([cosine[:, members].mean(axis=1) for members in groups], axis=0)


def rds_order(
    vectors, target_vectors: np.ndarray, limit: int, *, tasks: np.ndarray | None = None,
    eligible: np.ndarray | None = None, pairs_per_block: int = _PAIRS_PER_BLOCK,
) -> np.ndarray:
    """The first `limit` pool rows RDS+ takes, in the order it takes them (see the module docstring).

    Each target example ranks the eligible rows by cosine similarity (descending; ties to the lower row). The examples
    take turns in the target's order, each taking its best row not taken yet; with `tasks`, the tasks (in the order
    they first appear) take turns, and each task's turn goes to its next example. Only the best `K` rows of each
    example are kept, found block by block over the pool (memory `O(block x m + K x m)`, never `n x m`); when the
    turns use up an example's `K`, `K` grows and the ranking is redone.

    Args:
        vectors (`np.ndarray` or [`~cache.StoredVectors`]):
            `(n, d)` unit-norm pool vectors.
        target_vectors (`np.ndarray`):
            `(m, d)` vectors of the target examples (normalised here).
        limit (`int`):
            Rows to return; at most the eligible rows.
        tasks (`np.ndarray`, *optional*):
            Each example's task.
        eligible (`np.ndarray`, *optional*):
            Boolean mask of the rows that may be taken.
        pairs_per_block (`int`, *optional*):
            Pool rows x examples scored at once.
    """
    targets = _unit(np.asarray(target_vectors, dtype=np.float32))
    n, m = len(vectors), len(targets)
    allowed = int(n if eligible is None else np.count_nonzero(eligible))
    if not 0 <= limit <= allowed:
        raise InvalidArgumentError(f"Cannot take {limit} rows by similarity to the target: only {allowed} are eligible.")
    groups = _task_groups(tasks) if tasks is not None else [np.arange(m)]
    keep = min(allowed, max(16, 2 * math.ceil(limit / m) + 8))
    while True:
        candidates = top_rows(vectors, targets, keep, eligible=eligible, pairs_per_block=pairs_per_block)
        order = _round_robin(candidates, groups, limit, n)
        if order is not None:
            return order
        keep = min(allowed, keep * 4)


def top_rows(vectors, targets: np.ndarray, keep: int, *, eligible=None, pairs_per_block: int = _PAIRS_PER_BLOCK) -> np.ndarray:
    """`(m, keep)` pool rows: each target example's `keep` most similar eligible rows, best first (ties: lower row)."""
    n, m = len(vectors), len(targets)
    block = max(64, pairs_per_block // max(m, 1))
    best_rows = np.zeros((m, 0), dtype=np.int64)
    best_scores = np.zeros((m, 0), dtype=np.float32)
    for start in range(0, n, block):
        scores = (np.asarray(vectors[start : start + block], dtype=np.float32) @ targets.T).T  # (m, rows)
        if eligible is not None:
            scores[:, ~eligible[start : start + block]] = -np.inf
        # Only rows at or above each example's current keep-th best can enter its list.
        floor = best_scores[:, -1] if best_scores.shape[1] == keep else np.full(m, -np.inf, dtype=np.float32)
        example, column = np.nonzero((scores >= floor[:, None]) & np.isfinite(scores))
        rows = np.concatenate([np.repeat(np.arange(m), best_rows.shape[1]), example])
        ids = np.concatenate([best_rows.ravel(), column + start])
        values = np.concatenate([best_scores.ravel(), scores[example, column]])
        order = np.lexsort((ids, -values, rows))
        rows, ids, values = rows[order], ids[order], values[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
        kept = rank < keep
        width = min(keep, int(np.bincount(rows[kept], minlength=m).min()) if m else 0)
        kept &= rank < width
        best_rows = ids[kept].reshape(m, width)
        best_scores = values[kept].reshape(m, width)
    return best_rows


def _round_robin(candidates: np.ndarray, groups: list[np.ndarray], limit: int, n: int) -> np.ndarray | None:
    """The rows the turns take: turn t goes to task `t % tasks`, to its next example in turn; `None` when an example
    runs out of kept candidates before `limit` rows."""
    taken = np.zeros(n, dtype=bool)
    cursor = np.zeros(len(candidates), dtype=np.int64)
    width = candidates.shape[1]
    order = []
    turn = 0
    while len(order) < limit:
        members = groups[turn % len(groups)]
        example = members[(turn // len(groups)) % len(members)]
        turn += 1
        position = cursor[example]
        while position < width and taken[candidates[example, position]]:
            position += 1
        if position == width:
            return None
        row = int(candidates[example, position])
        taken[row] = True
        cursor[example] = position + 1
        order.append(row)
    return np.asarray(order, dtype=np.int64)


def _task_groups(tasks: np.ndarray) -> list[np.ndarray]:
    """The example indices of each task, tasks in the order they first appear."""
    names = list(dict.fromkeys(tasks.tolist()))
    return [np.flatnonzero(np.asarray([t == name for t in tasks.tolist()])) for name in names]


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


@dataclass(frozen=True)
class Target:
    """The embedded target of one selection, and what it sets: the stage [`prepare_target`] returns.

    Args:
        dataset (`datasets.Dataset`): the target examples.
        vectors (`np.ndarray`): their `(m, d)` unit vectors, from the selection's encoder.
        tasks (`np.ndarray`, *optional*): each example's task (`target_task_column`).
        options ([`RenderOptions`], *optional*): how its rows became text.
        method (`str`): `"kmq"` or `"rds"`.
        sharpness (`float`): the exponent of the affinity in the kMQ quotas.
        task_column (`str`, *optional*): the column naming each example's task.
        affinity (`np.ndarray`): each cluster's affinity to the target ([`cluster_affinity`]).
        example_clusters (`np.ndarray`): each example's nearest cluster (highest cosine to its centroid; ties to the
            lower cluster), what [`~scoring.TargetLossScorer`] scores clusters by.
    """

    dataset: datasets.Dataset
    vectors: np.ndarray
    tasks: np.ndarray | None
    options: RenderOptions | None
    method: str
    sharpness: float
    task_column: str | None
    affinity: np.ndarray
    example_clusters: np.ndarray

    @property
    def weights(self) -> np.ndarray:
        """The cluster weights of the kMQ quotas: `affinity ** sharpness`."""
        return sample.affinity_weights(self.affinity, self.sharpness)

    def draw(self, inputs, rows: int, *, quality_temperature=1.0, quality_weighting="softmax", quota="proportional"):
        """`rows` pool rows (sorted) of `inputs` ([`~methods.DrawInputs`]): affinity-weighted kMQ, or RDS+."""
        if self.method == "rds":
            return np.sort(rds_order(inputs.embeddings, self.vectors, rows, tasks=self.tasks, eligible=inputs.eligible))
        clustering = inputs.clustering
        return sample.kmq_sample(
            clustering.labels, rows, k=clustering.k, seed=inputs.seed, quality=inputs.quality,
            temperature=quality_temperature, weighting=quality_weighting, weights=self.weights, eligible=inputs.eligible,
            quota=quota,
        )

    def order(self, inputs, lengths: np.ndarray, max_tokens: int, *, quality_temperature=1.0, quality_weighting="softmax",
              quota="proportional") -> np.ndarray:
        """Rows in the order a growing token budget takes them, at least as far as `max_tokens` reaches (RDS+ computes
        a prefix of its order, grown until its rows pass `max_tokens` or the eligible rows run out)."""
        if self.method == "rds":
            allowed = len(lengths) if inputs.eligible is None else int(np.count_nonzero(inputs.eligible))
            limit = min(allowed, 64)
            while True:
                order = rds_order(inputs.embeddings, self.vectors, limit, tasks=self.tasks, eligible=inputs.eligible)
                if limit == allowed or int(lengths[order].sum()) > max_tokens:
                    return order
                limit = min(allowed, limit * 4)
        clustering = inputs.clustering
        key, tiebreak = sample.row_priorities(
            len(clustering.labels), np.random.default_rng(inputs.seed), quality=inputs.quality,
            temperature=quality_temperature, weighting=quality_weighting,
        )
        return sample.priority_order(
            clustering.labels, key, tiebreak, k=clustering.k, eligible=inputs.eligible, quota=quota, weights=self.weights
        )

    def record(self, *, name: str | None = None) -> dict:
        """The manifest's `target`: which examples (name, fingerprint, rows, digest), how they were read and used
        (method, sharpness, task column, tasks) and each cluster's affinity."""
        tasks = None
        if self.tasks is not None:
            values, counts = np.unique(np.asarray([str(t) for t in self.tasks]), return_counts=True)
            tasks = {str(v): int(c) for v, c in zip(values, counts)}
        from .manifest import pool_name

        return {
            "name": name or pool_name(self.dataset),
            "fingerprint": self.dataset._fingerprint,
            "num_rows": len(self.dataset),
            "digest": target_digest(self.dataset),
            "method": self.method,
            "sharpness": float(self.sharpness) if self.method == "kmq" else None,
            "task_column": self.task_column,
            "tasks": tasks,
            "render": self.options.to_dict() if self.options is not None else None,
            "cluster_affinity": [round(float(a), 6) for a in self.affinity],
            "example_clusters": [int(c) for c in self.example_clusters],
        }


def prepare_target(
    target, clustering, *, method: str, sharpness: float, task_column: str | None, pool_render: RenderOptions | None,
    include_answer: bool = True, encoder: Any = None, encoder_revision: str | None = None,
    embedding_column: str | None = None, tokenizer: Any = None, dim: int | None = None, **embed_kwargs,
) -> Target:
    """Embed `target` the way the pool was embedded and measure each cluster's affinity to it.

    The examples are embedded with the pool's `encoder` (cached like the pool's vectors; `embed_kwargs` go to
    [`embed.embed_dataset`]), or their vectors are read from the pool's `embedding_column`.
    """
    from .embed import embed_dataset, embeddings_from_column

    dataset = as_target_dataset(target)
    options = target_render_options(dataset, pool_render, include_answer=include_answer)
    if embedding_column is not None:
        vectors = np.asarray(embeddings_from_column(dataset, embedding_column, dim=dim), dtype=np.float32)
    else:
        vectors, _ = embed_dataset(dataset, options, encoder=encoder, revision=encoder_revision, tokenizer=tokenizer, **embed_kwargs)
        vectors = np.asarray(vectors, dtype=np.float32)
    tasks = target_tasks(dataset, task_column)
    affinity = cluster_affinity(clustering.centroids, vectors, tasks)
    nearest = np.argmax(_unit(np.asarray(clustering.centroids, dtype=np.float32)) @ _unit(vectors).T, axis=0)
    logger.info(
        "Target: %d examples (%s); cluster affinity from %.3f to %.3f", len(dataset), method, affinity.min(), affinity.max()
    )
    return Target(dataset, vectors, tasks, options, method, float(sharpness), task_column, affinity, nearest)


def affinity_split(affinity, cluster_sizes, selected_per_cluster, bands: int = 4) -> list[dict]:
    """How the chosen rows split by affinity: the clusters ranked by affinity to the target, cut into `bands` bands of
    about equal pool rows (a cluster goes to the band of its middle row); per band its pool and chosen rows and the
    affinity range. Uniform sampling gives each band about 1 / `bands` of the chosen rows."""
    affinity = np.asarray(affinity, dtype=np.float64)
    sizes = np.asarray(cluster_sizes, dtype=np.float64)
    chosen = np.asarray(selected_per_cluster, dtype=np.int64)
    order = np.lexsort((np.arange(len(affinity)), -affinity))
    middle = np.cumsum(sizes[order]) - sizes[order] / 2
    band_of = np.minimum((middle / max(sizes.sum(), 1) * bands).astype(np.int64), bands - 1)
    split = []
    for band in range(bands):
        members = order[band_of == band]
        if not len(members):
            continue
        split.append({
            "band": band + 1, "clusters": len(members), "pool_rows": int(sizes[members].sum()),
            "selected_rows": int(chosen[members].sum()),
            "affinity": [round(float(affinity[members].min()), 4), round(float(affinity[members].max()), 4)],
        })
    return split


def check_trainer_target(target, exclude, render: RenderOptions, *, task_column, embedding_column) -> datasets.Dataset | None:
    """[`check_target`] for `IterativeSelectionTrainer(..., target_dataset=...)`: its layout, tasks and vectors, and no
    item of `exclude_dataset`, checked before the model or any encoder loads; `None` without a target."""
    if target is None:
        return None
    exclude = None if exclude is None else as_dataset(exclude)
    return check_target(
        target, pool_render=render, include_answer=render.include_answer, task_column=task_column,
        embedding_column=embedding_column, exclude=exclude,
        exclude_options=None if exclude is None else exclude_render_options(exclude, render),
    )


def trainer_target_record(target, clustering, render: RenderOptions, args, *, encoder, dim: int) -> dict | None:
    """The trainer's target stage (main process): embed `target` as the pool was and measure each cluster's affinity
    ([`prepare_target`], `target_method="kmq"` with `args.target_sharpness`); its manifest record, the round plan's
    fixed cluster weights ([`~rounds.target_prior`]), or `None` without a target."""
    if target is None:
        return None
    return prepare_target(
        target, clustering, method="kmq", sharpness=args.target_sharpness, task_column=args.target_task_column,
        pool_render=render, include_answer=render.include_answer, encoder=encoder, embedding_column=args.embedding_column,
        dim=dim,
    ).record()
