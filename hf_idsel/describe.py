"""Describe: each cluster in words, by its distinctive terms and its most representative rows.

A cluster id says nothing to a reader; its description says what the cluster holds:

- `terms`: the words most distinctive of the cluster, by class-based TF-IDF (c-TF-IDF, as in
  BERTopic) over the cluster's rendered texts. Each row counts once per word it contains
  (`CountVectorizer(binary=True)`, so one long row cannot dominate); a cluster's counts are summed
  into one "class document", and a word's weight in cluster c is

      tf(t, c) * log(1 + A / f(t))

  where `tf(t, c)` is the word's share of cluster c's counts, `f(t)` its count over every cluster
  and `A` the average count per cluster. A word frequent in one cluster and rare elsewhere scores
  high; English stop words, numbers and one-letter tokens are left out.
- `examples`: the rows nearest the cluster's centroid (highest cosine similarity), their rendered
  text on one line and shortened to about 100 characters; `example_rows` are their pool row ids.

Descriptions are cheap and deterministic: each cluster's terms come from a sample of at most
`MAX_ROWS_PER_CLUSTER` of its rows (fewer when k is large: about `MAX_ROWS` in all, but never fewer
than `MIN_ROWS_PER_CLUSTER` a cluster), drawn with the selection's seed, and only the first
`TERM_CHARS` characters of each row count (a 200k-row pool takes a few seconds on 2 CPU cores).
They are computed once, on rank 0, after clustering; they use their own random generator, so the
selected rows are the same as without them.
"""

from __future__ import annotations

import numpy as np

DEFAULT_TERMS = 5
DEFAULT_EXAMPLES = 2
MAX_ROWS_PER_CLUSTER = 2_000  # rows of one cluster whose texts count toward its terms
MAX_ROWS = 50_000  # rows of all clusters together; a large k gets fewer rows per cluster
MIN_ROWS_PER_CLUSTER = 50  # ... but never fewer than this
TERM_CHARS = 2_000  # characters of each row that count toward the terms
EXAMPLE_CHARS = 100
# A word: a letter, then letters, digits or underscores (so `num_list` is one word, `42` none).
TOKEN_PATTERN = r"(?u)\b[^\W\d_]\w+\b"


def describe_clusters(
    texts: list[str],
    labels,
    similarity,
    k: int,
    *,
    terms: int = DEFAULT_TERMS,
    examples: int = DEFAULT_EXAMPLES,
    rows=None,
) -> list[dict]:
    """Describe each of `k` clusters by its most distinctive terms (c-TF-IDF) and the texts nearest its centroid.

    Args:
        texts (`list[str]`):
            Rendered rows (e.g. a sample of each cluster, see [`description_rows`]).
        labels (`np.ndarray`):
            Cluster id in `[0, k)` of each text.
        similarity (`np.ndarray`):
            Cosine similarity of each text's row to its cluster's centroid.
        k (`int`):
            Number of clusters.
        terms (`int`, *optional*, defaults to `5`):
            Terms per cluster (fewer when the cluster's texts hold fewer distinct words).
        examples (`int`, *optional*, defaults to `2`):
            Representative texts per cluster: the most similar to the centroid, ties broken by position,
            texts identical once shortened counted once.
        rows (`np.ndarray`, *optional*):
            Pool row id of each text, recorded as `example_rows`; defaults to the texts' positions.

    Returns:
        `list[dict]`: one `{"terms": [...], "examples": [...], "example_rows": [...]}` per cluster, in cluster
        order; an empty cluster has empty lists.
    """
    labels = np.asarray(labels, dtype=np.int64)
    similarity = np.asarray(similarity, dtype=np.float64)
    rows = np.arange(len(texts)) if rows is None else np.asarray(rows, dtype=np.int64)
    if not len(texts) == len(labels) == len(similarity) == len(rows):
        raise ValueError(
            f"`texts`, `labels`, `similarity` and `rows` must align: got {len(texts)}, {len(labels)}, "
            f"{len(similarity)} and {len(rows)} entries."
        )
    top_terms = cluster_terms(texts, labels, k, terms=terms)
    descriptions = []
    for cluster in range(k):
        members = np.flatnonzero(labels == cluster)
        nearest = members[np.lexsort((members, -similarity[members]))]
        shown, shown_rows = [], []
        for position in nearest:
            if len(shown) == examples:
                break
            text = shorten(texts[position])
            if text not in shown:
                shown.append(text)
                shown_rows.append(int(rows[position]))
        descriptions.append({"terms": top_terms[cluster], "examples": shown, "example_rows": shown_rows})
    return descriptions


def cluster_terms(texts: list[str], labels, k: int, *, terms: int = DEFAULT_TERMS) -> list[list[str]]:
    """The `terms` most distinctive words of each of `k` clusters by c-TF-IDF (see the module docstring)."""
    from scipy import sparse
    from sklearn.feature_extraction.text import CountVectorizer

    labels = np.asarray(labels, dtype=np.int64)
    vectorizer = CountVectorizer(stop_words="english", token_pattern=TOKEN_PATTERN, binary=True)
    try:
        counts = vectorizer.fit_transform([text[:TERM_CHARS] for text in texts])
    except ValueError:  # no text holds a word: only stop words, numbers or punctuation
        return [[] for _ in range(k)]
    words = vectorizer.get_feature_names_out()
    membership = sparse.csr_matrix((np.ones(len(texts)), (labels, np.arange(len(texts)))), shape=(k, len(texts)))
    # (k, vocabulary), sparse: how many rows of each cluster hold each word.
    per_cluster = sparse.csr_matrix(membership @ counts, dtype=np.float64)
    totals = np.asarray(per_cluster.sum(axis=1)).ravel()
    idf = np.log1p((totals.sum() / k) / np.asarray(per_cluster.sum(axis=0)).ravel())
    scores = sparse.csr_matrix(sparse.diags(1.0 / np.maximum(totals, 1.0)) @ per_cluster.multiply(idf[None, :]))
    top = []
    for cluster in range(k):
        start, end = scores.indptr[cluster], scores.indptr[cluster + 1]
        values, columns = scores.data[start:end], scores.indices[start:end]
        # Equal scores are listed alphabetically (the vocabulary's order).
        order = np.lexsort((columns, -values))[:terms]
        top.append([str(words[columns[j]]) for j in order if values[j] > 0])
    return top


def description_rows(labels, similarity, k: int, *, seed: int, examples: int = DEFAULT_EXAMPLES) -> np.ndarray:
    """The pool rows whose texts describe the clusters, ascending: each cluster's rows nearest its centroid
    (`4 * examples`, so that duplicates can be skipped) and a sample of its rows drawn with `seed` (at most
    `MAX_ROWS_PER_CLUSTER`, fewer when k is large)."""
    labels = np.asarray(labels, dtype=np.int64)
    similarity = np.asarray(similarity, dtype=np.float64)
    cap = min(MAX_ROWS_PER_CLUSTER, max(MIN_ROWS_PER_CLUSTER, MAX_ROWS // k))
    rng = np.random.default_rng(seed)
    by_cluster = np.argsort(labels, kind="stable")
    ends = np.cumsum(np.bincount(labels, minlength=k))
    starts = ends - np.bincount(labels, minlength=k)
    chosen = []
    for cluster in range(k):
        members = by_cluster[starts[cluster] : ends[cluster]]
        nearest = members[np.lexsort((members, -similarity[members]))[: 4 * examples]]
        sample = rng.choice(members, size=cap, replace=False) if len(members) > cap else members
        chosen += [nearest, sample]
    return np.unique(np.concatenate(chosen))


def describe_pool(pool, options, clustering, *, seed: int, terms: int = DEFAULT_TERMS, examples: int = DEFAULT_EXAMPLES) -> list[dict]:
    """Describe the clusters of `clustering` (a [`~cluster.Clustering`] of `pool`) from the rows rendered with `options`.

    Renders only the rows [`description_rows`] picks, then calls [`describe_clusters`] on them.
    """
    from .render import render_batch

    rows = description_rows(clustering.labels, clustering.similarity, clustering.k, seed=seed, examples=examples)
    batch = pool.select_columns(options.input_columns).select(rows)[:]
    prompts, answers = render_batch(batch, options)
    texts = [f"{prompt}\n{answer}" if answer else prompt for prompt, answer in zip(prompts, answers)]
    return describe_clusters(
        texts, clustering.labels[rows], clustering.similarity[rows], clustering.k, terms=terms, examples=examples, rows=rows
    )


def shorten(text: str, limit: int = EXAMPLE_CHARS) -> str:
    """`text` on one line (runs of whitespace made one space), cut to `limit` characters with a trailing `…`."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def short_terms(description: dict | None, count: int = 3) -> str:
    """The first `count` terms of a cluster's description, comma-separated (`""` without a description)."""
    return ", ".join((description or {}).get("terms", [])[:count])
