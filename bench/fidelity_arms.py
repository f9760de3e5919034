"""Fidelity experiment, the arms: what each arm is, the placebo scorer and the static cluster prior, and
the selections that need no model (static arms, the prior, and the placebo's rounds replayed with the
library's round functions), which the selection-only part draws for hundreds of seeds.

Part of bench/fidelity.py (docs/fidelity.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import datasets
import numpy as np

from hf_idsel.scorers import RoundScorer

from fidelity_pool import DOMAINS, JUNK_KINDS, FidelityConfig, coverage_distance, junk_share

# The cluster weight rule of every iterative arm and of the static prior (IterativeSelectionConfig.weight_update).
WEIGHT_RULE = "softmax"
# `Arm.scorer` value of the placebo: bench's PlaceboScorer, not a library scorer name.
PLACEBO = "placebo"
# First word of the placebo's random stream: (PLACEBO_STREAM, seed, round) seeds its draw.
PLACEBO_STREAM = 0x504C4143


def library_default(name: str):
    """The default of an `IterativeSelectionConfig` field, read from the installed hf_idsel (never hard-coded)."""
    from hf_idsel.config import IterativeSelectionConfig

    for f in dataclasses.fields(IterativeSelectionConfig):
        if f.name == name:
            return f.default
    raise KeyError(name)


@dataclass(frozen=True)
class Arm:
    """How one arm selects its rows and trains: one entry of `ARMS`.

    Args:
        kind (`str`):
            `"static"` (rows from `hf_idsel.diverse_select`, then one epoch of a plain trl SFTTrainer),
            `"prior"` (the static cluster prior: weights from the quality column, one kMQ draw, then the
            same training), `"iterative"` (IterativeSelectionTrainer) or `"control"` (a draw that uses the
            planted labels).
        select (`dict`, *optional*):
            Static arms: `diverse_select` keyword arguments (`method`, `quality_column`, `encoder`, ...).
            Without an `encoder` the arm reads the pool's shared `embedding` column; with one it embeds
            the pool itself and shares the pool split and seeds with the other arms, not the clustering.
        k (`int` or `str`, *optional*):
            Number of clusters, or `"auto"`; `None` takes the config's `k`.
        scorer (`str`, *optional*):
            Iterative arms: a library scorer's name, `"placebo"` (random cluster scores), or `None` for
            the library's default scorer with its default options.
        round_mode (`str`, *optional*, defaults to `"continue"`):
            Iterative arms: `"continue"` or `"restart"`.
    """

    kind: str
    select: dict = field(default_factory=dict)
    k: int | str | None = None
    scorer: str | None = None
    round_mode: str = "continue"


KMQ = {"method": "kmq", "quality_column": "quality"}
# Every arm of the experiment. An arm is one entry: an encoder arm, for instance, is
# `"kmq-<encoder>": Arm("static", select={**KMQ, "encoder": "<encoder spec>"})`.
ARMS = {
    "random": Arm("static", select={"method": "random"}),
    # kMQ at the library's default k ("auto": the paper's procedure) on the shared MiniLM clustering.
    "kmq": Arm("static", select=KMQ),
    # The library's default iterative configuration: its default scorer (and reference), read at run time.
    "iter-default": Arm("iterative"),
    # The same rounds with random cluster scores (PlaceboScorer): does the feedback carry information?
    "iter-placebo": Arm("iterative", scorer=PLACEBO),
    # A static cluster prior from the quality column: weights from each cluster's mean quality through the
    # trainer's weight rule, then one kMQ draw. Does the feedback add anything over the static quality?
    "kmq-clusterq": Arm("prior"),
    # Random with an equal share per source: the fair random baseline.
    "balanced-random": Arm("static", select={"method": "balanced-random", "source_column": "origin"}),
    # The cheapest scorer (training losses, no generation), for re-deciding the default.
    "iter-loss": Arm("iterative", scorer="loss"),
    # Not in the default run.
    "kmeans-random": Arm("static", select={"method": "kmeans-random"}),
    "iter-perplexity": Arm("iterative", scorer="perplexity"),
    "iter-default-restart": Arm("iterative", round_mode="restart"),
    "iter-loss-restart": Arm("iterative", scorer="loss", round_mode="restart"),
    "kmq-hidden": Arm("static", select={**KMQ, "encoder": "hidden-states:HuggingFaceTB/SmolLM2-135M-Instruct"}),
    "kmq-static": Arm("static", select={**KMQ, "encoder": "static"}),
    # Controls: `oracle-clean` draws uniformly from the non-junk rows (what perfect junk filtering would
    # give), `junk-only` draws only junk (checks the accounting).
    "oracle-clean": Arm("control"),
    "junk-only": Arm("control"),
}
ALL_ARMS = tuple(ARMS)
# The three pre-registered contrasts (docs/fidelity.md, "Pre-registration"), each `arm - reference`.
CONTRASTS = (("iter-default", "iter-placebo"), ("iter-default", "kmq-clusterq"), ("kmq", "random"))
# Paired differences are also tabulated against these arms.
REFERENCE_ARMS = ("random", "iter-placebo")
# Arms the selection-only part draws for every seed: those whose selection needs no trained model.
SELECTION_ONLY_ARMS = ("random", "balanced-random", "kmq", "kmq-clusterq", "iter-placebo")


def default_arms() -> tuple:
    """The default arm set. `iter-loss` is left out when the library's default scorer is already `loss`
    (it would be `iter-default` run twice)."""
    arms = ["random", "kmq", "iter-default", "iter-placebo", "kmq-clusterq", "balanced-random", "iter-loss"]
    if library_default("scorer") == "loss":
        arms.remove("iter-loss")
    return tuple(arms)


def run_order(arms) -> list:
    """`arms` in run order: `iter-default` before `iter-placebo`, whose scale it sets; otherwise as given."""
    arms = list(dict.fromkeys(arms))
    if "iter-placebo" in arms and "iter-default" in arms and arms.index("iter-placebo") < arms.index("iter-default"):
        arms.remove("iter-default")
        arms.insert(arms.index("iter-placebo"), "iter-default")
    return arms


# --------------------------------------------------------------------------------------------
# The placebo: random cluster scores, the same rounds
# --------------------------------------------------------------------------------------------


def placebo_cluster_scores(k: int, seed: int, round_index: int, scale: float) -> np.ndarray:
    """The placebo's score of each of `k` clusters after round `round_index` of seed `seed`: independent
    normal draws with mean 0 and standard deviation `scale`, from a stream seeded by `(seed, round)` alone."""
    rng = np.random.default_rng([PLACEBO_STREAM, int(seed), int(round_index)])
    return rng.normal(0.0, float(scale), size=int(k))


def matched_scale(cluster_scores) -> float:
    """The spread the placebo copies: the sample standard deviation, across the scored clusters, of one
    round's cluster scores of the default arm (0 with fewer than two scored clusters: then no update moves)."""
    values = np.asarray([s for s in cluster_scores if s is not None], dtype=np.float64)
    return float(values.std(ddof=1)) if len(values) >= 2 else 0.0


class PlaceboScorer(RoundScorer):
    """Random cluster scores: every row scores its cluster's draw from `placebo_cluster_scores`.

    It generates nothing (`needs_generation = False`), so it costs the rounds nothing beyond rendering
    the scored rows. Each cluster's mean score is its draw, so the weight update is the trainer's own
    (`weight_update`, temperature and all) applied to random scores whose spread across clusters is
    `scales[round - 1]`: the default arm's spread in the same seed and round, so the weights move as
    much as under the default scorer, in random directions.

    Args:
        cluster_of (`dict`):
            `(rendered prompt, gold answer)` -> cluster id, for every pool row: the scorer is called with
            texts, and this is how it finds each row's cluster ([`cluster_lookup`]).
        k (`int`):
            Number of clusters.
        seed (`int`):
            The run's seed.
        scales (`list[float]` or `float`):
            The standard deviation of the cluster scores after each scored round (one value for all).
    """

    name = PLACEBO
    needs_generation = False

    def __init__(self, cluster_of: dict, k: int, seed: int, scales):
        self.cluster_of = cluster_of
        self.k, self.seed = int(k), int(seed)
        self.scales = scales
        self.round = 0
        self.drawn: list[list[float]] = []

    def scale(self, round_index: int) -> float:
        if isinstance(self.scales, (int, float)):
            return float(self.scales)
        return float(self.scales[round_index - 1])

    def _score(self, prompts, golds, generations):
        missing = [i for i, key in enumerate(zip(prompts, golds)) if key not in self.cluster_of]
        if missing:
            raise KeyError(f"PlaceboScorer: rows {missing[:5]} are not pool rows it knows (render options differ?)")
        self.round += 1
        z = placebo_cluster_scores(self.k, self.seed, self.round, self.scale(self.round))
        self.drawn.append(z.tolist())
        return np.asarray([z[self.cluster_of[key]] for key in zip(prompts, golds)], dtype=np.float64)


def cluster_lookup(pool: datasets.Dataset, labels: np.ndarray, tokenizer) -> dict:
    """`(rendered prompt, gold answer)` -> cluster of every pool row, rendered as the trainer renders the
    rows it scores (`resolve_render_options` + `prompt_and_answer`, with the training tokenizer)."""
    from hf_idsel.render import prompt_and_answer, resolve_render_options

    options = resolve_render_options(pool.column_names, tokenizer=tokenizer)
    out = {}
    for i in range(len(pool)):
        key = prompt_and_answer(pool[i], options, tokenizer)
        if out.setdefault(key, int(labels[i])) != int(labels[i]):
            raise ValueError(f"pool row {i} repeats another row's text in another cluster: the placebo cannot tell them apart")
    return out


def replay_placebo(labels: np.ndarray, quality: np.ndarray, k: int, cfg: FidelityConfig, seed: int, scales) -> list[dict]:
    """The placebo arm's rounds without training: the library's own round functions (`draw_round`,
    `sample_rows_per_cluster`, `close_round`) with the placebo's scores, exactly as the trainer calls
    them (its scores depend on no model). Checked against the trained placebo arm's rounds."""
    from hf_idsel.rounds import SelectionState, close_round, draw_round, round_seed, round_sizes, sample_rows_per_cluster

    labels = np.asarray(labels, dtype=np.int64)
    trainable = np.ones(len(labels), dtype=bool)  # drop_long_prompts left only rows every arm can train on
    state = SelectionState.start(labels, k)
    scorer = PlaceboScorer({}, k, seed, scales)
    for r, size in enumerate(round_sizes(cfg.budget, cfg.rounds), start=1):
        rows = draw_round(state, labels, size, round_index=r, trainable=trainable, selection_seed=seed,
                          quality=quality, quality_temperature=cfg.quality_temperature, quotas=library_default("quota"))
        state.current_round, state.current_rows = r, rows.tolist()
        scored = r < cfg.rounds  # score_last_round=False, as in the trained arms
        if scored:
            scored_rows = sample_rows_per_cluster(labels, rows, cfg.scored_rows_per_cluster, seed=round_seed(seed, r))
            scores = placebo_cluster_scores(k, seed, r, scorer.scale(r))[labels[scored_rows]]
        else:
            scored_rows, scores = np.zeros(0, dtype=np.int64), np.zeros(0)
        close_round(state, labels, trainable, scored_rows, scores, rule=WEIGHT_RULE, temperature=cfg.weight_temperature,
                    scorer=PLACEBO, scored=scored, global_step=0, k_selection=None)
    return [{"round": r["round"], "selected": r["selected"], "weights": r["weights"],
             "cluster_scores": r["cluster_scores"]} for r in state.rounds]


# --------------------------------------------------------------------------------------------
# The static cluster prior and the draws that need no model
# --------------------------------------------------------------------------------------------


def cluster_prior(labels: np.ndarray, quality: np.ndarray, k: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """`(weights, mean quality per cluster)`: each cluster's mean quality over all its rows, through the
    trainer's weight rule (`rounds.update_weights`, `WEIGHT_RULE`) from uniform weights, once."""
    from hf_idsel.rounds import cluster_scores, update_weights

    labels = np.asarray(labels, dtype=np.int64)
    means = cluster_scores(labels, np.arange(len(labels)), np.asarray(quality, dtype=np.float64), k)
    weights = update_weights(np.full(k, 1.0 / k), means, rule=WEIGHT_RULE, temperature=temperature)
    return weights, means


def prior_selection(labels, quality, k: int, cfg: FidelityConfig, seed: int) -> tuple[np.ndarray, dict]:
    """`kmq-clusterq`: one kMQ draw of the whole budget with the static prior's cluster weights (quotas
    proportional to weight x cluster size), the in-cluster draw kMQ's (`kmq_sample`, same seed as `kmq`)."""
    from hf_idsel.sample import kmq_sample

    weights, means = cluster_prior(labels, quality, k, cfg.weight_temperature)
    rows = kmq_sample(np.asarray(labels, dtype=np.int64), cfg.budget, k=k, seed=seed, quality=np.asarray(quality, dtype=np.float64),
                      temperature=cfg.quality_temperature, weights=weights)
    return np.sort(rows), {"weights": weights.tolist(), "cluster_mean_quality": means.tolist()}


def quick_selection(arm: str, labels, quality, sources, k: int, cfg: FidelityConfig, seed: int, scale=None) -> np.ndarray:
    """The rows of an arm in `SELECTION_ONLY_ARMS`, from the library's draw functions on a given clustering
    (what `diverse_select` calls for random, balanced-random and kmq; checked against it on the training
    part's seeds)."""
    from hf_idsel.baselines import balanced_random
    from hf_idsel.sample import kmq_sample, random_sample

    if arm == "random":
        return np.sort(random_sample(len(labels), cfg.budget, seed=seed))
    if arm == "balanced-random":
        return np.sort(balanced_random(np.asarray(sources), cfg.budget, seed=seed))
    if arm == "kmq":
        return np.sort(kmq_sample(labels, cfg.budget, k=k, seed=seed, quality=quality, temperature=cfg.quality_temperature))
    if arm == "kmq-clusterq":
        return prior_selection(labels, quality, k, cfg, seed)[0]
    if arm == "iter-placebo":
        rounds = replay_placebo(labels, quality, k, cfg, seed, scale)
        return np.asarray([r for rnd in rounds for r in rnd["selected"]], dtype=np.int64)
    raise ValueError(f"arm {arm!r} needs a trained model; the selection-only arms are {SELECTION_ONLY_ARMS}")


def static_selection(arm: str, pool: datasets.Dataset, cfg: FidelityConfig, seed: int, k, cache_dir=None):
    """`(pool indices, cluster of each, k_selection)` chosen by a static arm (diverse_select for the
    paper's methods; its manifest gives the chosen k and the silhouette curve)."""
    import hf_idsel

    is_junk = np.asarray(pool["is_junk"], dtype=bool)
    spec = ARMS[arm]
    rng = np.random.default_rng(seed)
    if arm == "oracle-clean":
        return np.sort(rng.choice(np.flatnonzero(~is_junk), cfg.budget, replace=False)), None, None
    if arm == "junk-only":
        junk = np.flatnonzero(is_junk)
        return np.sort(rng.choice(junk, min(cfg.budget, len(junk)), replace=False)), None, None
    kwargs = {"embedding_column": "embedding", "temperature": cfg.quality_temperature, **spec.select}
    if "encoder" in spec.select:  # the arm embeds the pool itself with its own encoder (cached)
        kwargs.pop("embedding_column")
    subset, manifest = hf_idsel.diverse_select(pool, budget=cfg.budget, k=k, seed=seed, cache_dir=cache_dir,
                                               return_manifest=True, **kwargs)
    clusters = np.asarray(subset["cluster"], dtype=np.int64) if "cluster" in subset.column_names else None
    return np.asarray(subset["source_index"], dtype=np.int64), clusters, manifest.k_selection


def selection_metrics(selected, pool_arrays: dict, embeddings: np.ndarray) -> dict:
    """What a selection holds: junk share, coverage, mean quality, rows per domain and junk kind."""
    selected = np.asarray(selected, dtype=np.int64)
    is_junk, kinds, origins = pool_arrays["is_junk"], pool_arrays["kind"], pool_arrays["origin"]
    clean = selected[~is_junk[selected]]
    return {
        "junk_share": junk_share(selected, is_junk),
        "coverage": coverage_distance(embeddings, selected),
        "mean_quality_selected": float(pool_arrays["quality"][selected].mean()),
        "selected_per_domain": {d: int((origins[clean] == d).sum()) for d in DOMAINS},
        "selected_per_kind": {k: int((kinds[selected] == k).sum()) for k in ("clean",) + JUNK_KINDS},
    }
