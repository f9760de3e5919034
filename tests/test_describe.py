"""Clusters described in words: c-TF-IDF terms and the rows nearest each centroid, in the manifest, the report,
the dataset card and the plot; old manifests without descriptions still load and render."""

import json
import os

import datasets
import numpy as np
import pytest

import hf_idsel
from helpers import make_trainer, planted_blobs
from hf_idsel import InvalidArgumentError, Manifest, diverse_select
from hf_idsel.cards import CardFacts, dataset_card
from hf_idsel.cli import main
from hf_idsel.cluster import Clustering
from hf_idsel.describe import cluster_terms, describe_clusters, describe_pool, description_rows, shorten
from hf_idsel.render import resolve_render_options
from hf_idsel.report import format_report, format_rounds, markdown_table, plot_selection, weight_changes
from hf_idsel.rounds import RoundRecord

# Three planted vocabularies over a shared filler: every row of a cluster holds its first two words, half hold
# the third; every row of every cluster holds "common", and stop words and numbers that never count.
VOCABULARY = {0: ("apple", "banana", "cherry"), 1: ("python", "function", "return"), 2: ("hello", "friend", "weekend")}


def planted_texts(per_cluster: int = 10):
    texts, labels = [], []
    for cluster, (first, second, third) in VOCABULARY.items():
        for i in range(per_cluster):
            extra = f" {third}" if i % 2 == 0 else ""
            texts.append(f"The {first} and the {second}{extra} are common, said row {i} of 42.")
            labels.append(cluster)
    return texts, np.asarray(labels)


def test_terms_are_the_words_distinctive_of_each_planted_cluster():
    texts, labels = planted_texts()
    assert cluster_terms(texts, labels, 3, terms=3) == [
        ["apple", "banana", "cherry"],
        ["function", "python", "return"],  # equal scores are listed alphabetically
        ["friend", "hello", "weekend"],
    ]
    # "common" (in every row of every cluster) ranks below a word in half the rows of one cluster only;
    # stop words ("the", "and", "are"), numbers and one-letter tokens are never terms.
    fourth = cluster_terms(texts, labels, 3, terms=10)[0]
    assert fourth[:4] == ["apple", "banana", "cherry", "common"]
    assert not {"the", "and", "are", "42", "of"} & set(fourth)


def test_term_scores_follow_the_class_based_tf_idf_formula():
    # Rows holding each word: cluster 0 {shared: 4, alpha: 3} (7 in all), cluster 1 {shared: 4, gamma: 4} (8);
    # A = (7 + 8) / 2 = 7.5. Cluster 0: alpha 3/7 * log(1 + 7.5/3) = 0.54 > shared 4/7 * log(1 + 7.5/8) = 0.38,
    # although more rows hold "shared"; and "shared" still scores above 0 (a plain log(k / clusters holding it)
    # would give it 0 and drop it).
    texts = ["shared alpha", "shared alpha", "shared alpha", "shared"] + ["shared gamma"] * 4
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    assert cluster_terms(texts, labels, 2, terms=5) == [["alpha", "shared"], ["gamma", "shared"]]


def test_examples_are_the_rows_nearest_the_centroid_shortened():
    texts, labels = planted_texts(per_cluster=4)
    texts[7] = "long " * 60  # cluster 1's nearest row: shortened to 100 characters
    similarity = np.linspace(0.1, 0.9, len(texts))  # later rows nearer their centroid
    similarity[0] = 0.99
    rows = np.arange(len(texts)) + 1000
    descriptions = describe_clusters(texts, labels, similarity, 4, terms=2, examples=2, rows=rows)
    assert len(descriptions) == 4
    assert descriptions[0]["examples"] == [texts[0], texts[3]] and descriptions[0]["example_rows"] == [1000, 1003]
    assert descriptions[1]["examples"] == [("long " * 20)[:99] + "…", texts[6]]
    assert descriptions[1]["example_rows"] == [1007, 1006]
    assert descriptions[2]["examples"] == [texts[11], texts[10]]
    assert describe_clusters(["a  b\n\nc " * 40], [0], [1.0], 1)[0]["examples"][0].startswith("a b c a b c")
    # A cluster without rows is described by empty lists.
    assert descriptions[3] == {"terms": [], "examples": [], "example_rows": []}


def test_example_ties_go_by_position_and_duplicates_count_once():
    texts = ["same text", "same text", "other text", "third text"]
    descriptions = describe_clusters(texts, [0, 0, 0, 0], [0.9, 0.9, 0.9, 0.5], 1, examples=2)
    assert descriptions[0]["examples"] == ["same text", "other text"]
    assert descriptions[0]["example_rows"] == [0, 2]


def test_texts_without_words_get_no_terms():
    assert describe_clusters(["1 2 3", "the of"], [0, 1], [1.0, 1.0], 2)[1]["terms"] == []
    with pytest.raises(ValueError, match="align"):
        describe_clusters(["a"], [0, 0], [1.0], 1)


def test_description_rows_are_capped_seeded_and_hold_the_nearest(monkeypatch):
    from hf_idsel import describe

    monkeypatch.setattr(describe, "MAX_ROWS_PER_CLUSTER", 30)
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat([0, 1, 2], [200, 10, 90]))
    similarity = rng.random(len(labels))
    rows = description_rows(labels, similarity, 3, seed=7, examples=2)
    assert np.array_equal(rows, description_rows(labels, similarity, 3, seed=7, examples=2))
    assert not np.array_equal(rows, description_rows(labels, similarity, 3, seed=8, examples=2))
    counts = np.bincount(labels[rows], minlength=3)
    assert counts[1] == 10 and 30 <= counts[0] <= 38 and 30 <= counts[2] <= 38  # a sample of 30 and the 4 * 2 nearest
    for cluster in range(3):
        members = np.flatnonzero(labels == cluster)
        nearest = members[np.argsort(-similarity[members])[:8]]
        assert set(nearest) <= set(rows.tolist())
    assert list(rows) == sorted(set(rows.tolist()))


def planted_pool(per_cluster: int = 30) -> datasets.Dataset:
    embeddings, blobs = planted_blobs(3, per_cluster, seed=3)
    texts, labels = planted_texts(per_cluster)
    assert labels.tolist() == blobs.tolist()
    return datasets.Dataset.from_dict({"text": texts, "embedding": embeddings.tolist(), "blob": blobs.tolist()})


def test_diverse_select_records_descriptions_and_selects_the_same_rows():
    pool = planted_pool()
    subset, manifest = diverse_select(pool, 12, k=3, embedding_column="embedding", return_manifest=True)
    descriptions = manifest.cluster_descriptions
    assert len(descriptions) == 3
    blobs = []
    for description in descriptions:
        blob = pool["blob"][description["example_rows"][0]]
        blobs.append(blob)
        assert description["terms"][:3] == sorted(VOCABULARY[blob][:2]) + [VOCABULARY[blob][2]]
        assert all(pool["blob"][row] == blob for row in description["example_rows"])
        assert description["examples"] == [pool["text"][row] for row in description["example_rows"]]
    assert sorted(blobs) == [0, 1, 2]
    # The same call twice describes identically; a pool without text selects the same rows, undescribed.
    again = diverse_select(pool, 12, k=3, embedding_column="embedding", return_manifest=True)[1]
    assert again.cluster_descriptions == descriptions
    textless = diverse_select(pool.remove_columns("text"), 12, k=3, embedding_column="embedding", return_manifest=True)[1]
    assert textless.cluster_descriptions is None
    assert textless.selected_indices == manifest.selected_indices and textless.selected_clusters == manifest.selected_clusters
    # Descriptions travel through the manifest's JSON.
    assert Manifest.load(manifest.to_json()).cluster_descriptions == descriptions


def test_describe_pool_renders_chat_rows_without_role_markers():
    pool = hf_idsel.load_builtin_pool({"gsm8k": 6, "humaneval": 6, "chitchat": 0, "mmlu": 0})
    labels = np.repeat([0, 1], 6)
    similarity = np.linspace(1.0, 0.5, 12).astype(np.float32)
    clustering = Clustering(np.zeros((2, 2), np.float32), labels, similarity, 0.0, 2)
    descriptions = describe_pool(pool, resolve_render_options(pool.column_names), clustering, seed=0)
    assert descriptions == describe_pool(pool, resolve_render_options(pool.column_names), clustering, seed=0)
    first = pool[0]["messages"]
    assert descriptions[0]["examples"][0] == shorten(first[0]["content"] + "\n" + first[1]["content"])
    assert "def" in descriptions[1]["terms"] and "user" not in descriptions[1]["terms"]


@pytest.fixture
def described():
    return diverse_select(planted_pool(), 12, k=3, embedding_column="embedding", return_manifest=True)[1]


def _round(index, weights, selected, per_cluster, cumulative, scored=True):
    return RoundRecord(
        round=index, weights=weights, cluster_scores=[None] * len(weights), selected=selected, selected_per_cluster=per_cluster,
        cumulative_size=cumulative, scorer="loss", scored=scored, scored_rows=len(selected) if scored else 0, global_step=index,
        k=len(weights),
    )


ROUNDS = [
    _round(1, [0.6, 0.1, 0.3], [0, 1], [1, 1, 0], 2),
    _round(2, [0.66, 0.02, 0.32], [2, 3], [1, 0, 1], 4, scored=False),
]


def test_weight_changes_name_the_clusters_furthest_from_uniform():
    assert weight_changes(ROUNDS) == ([0], [1])  # 0.32 is within 10% of 1/3
    assert weight_changes([_round(1, [0.25] * 4, [0], [1, 0, 0, 0], 1)]) == ([], [])
    assert weight_changes([_round(1, [0.4, 0.3, 0.2, 0.1], [0], [1, 0, 0, 0], 1)], top=1) == ([0], [3])


def test_report_card_and_plot_show_the_descriptions(described, tmp_path):
    descriptions = described.cluster_descriptions
    report = format_report(described)
    assert "terms" in report.splitlines()[3] and "nearest its centroid" in report
    for description in descriptions:
        assert ", ".join(description["terms"]) in report and description["examples"][0] in report
    rounds = format_rounds(ROUNDS, described.cluster_sizes, descriptions=descriptions)
    favoured = rounds[rounds.index("favoured") :]
    assert f"0.333 -> 0.660  {', '.join(descriptions[0]['terms'][:3])}: {descriptions[0]['examples'][0]}" in favoured
    assert "cut (weight after round 2 vs the uniform start 0.333):\n      1  0.333 -> 0.020" in rounds
    assert "favoured" in format_rounds(ROUNDS) and "terms" not in format_rounds(ROUNDS)

    table = markdown_table(described, ROUNDS)
    assert table.splitlines()[0].endswith("| terms | nearest the centroid |")
    card = dataset_card(described, CardFacts("me/planted", None, "mit", "en"), configs=["default"], rounds=ROUNDS).content
    assert "most distinctive terms (class-based TF-IDF" in card
    for description in descriptions:
        assert ", ".join(description["terms"]) in card and description["examples"][0] in card
    changes = card[card.index("**Clusters the run favoured**") :]
    assert f"- cluster 0 (0.333 → 0.660): {', '.join(descriptions[0]['terms'])}" in changes
    assert f"- cluster 1 (0.333 → 0.020): {', '.join(descriptions[1]['terms'])}" in changes.split("**Clusters the run cut**")[1]

    import matplotlib.image

    image = matplotlib.image.imread(plot_selection(described, str(tmp_path / "plot.png"), ROUNDS))
    assert image.shape[0] > 900  # two panels, each with room for the turned term labels


def test_markdown_cells_escape_what_would_break_the_table(described):
    described.cluster_descriptions[0]["examples"] = ["a | b <script> `code` *bold*"]
    row = next(line for line in markdown_table(described).splitlines() if line.startswith("| 0 |"))
    assert row.endswith(r"| a \| b \<script\> \`code\` \*bold\* |")


def test_an_old_manifest_without_descriptions_still_loads_and_renders(described, tmp_path, capsys):
    data = described.to_dict()
    del data["cluster_descriptions"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    old = Manifest.load(str(tmp_path / "manifest.json"))
    assert old.cluster_descriptions is None
    old.check_integrity()
    assert "terms" not in format_report(old) and "nearest" not in format_report(old)
    assert "terms" not in markdown_table(old, ROUNDS)
    card = dataset_card(old, CardFacts("me/old", None, "mit", "en"), configs=["default"], rounds=ROUNDS).content
    assert "class-based TF-IDF" not in card and "- cluster 0 (0.333 → 0.660)\n" in card
    assert main(["report", str(tmp_path), "--plot", str(tmp_path / "old.png")]) == 0
    assert "12 of 90 rows" in capsys.readouterr().out and os.path.isfile(tmp_path / "old.png")


@pytest.mark.parametrize(
    "descriptions, problem",
    [
        ([{"terms": [], "examples": []}], "one entry per cluster"),
        ("apple", "one entry per cluster"),
        ([{"terms": [1], "examples": []}] * 3, r"cluster_descriptions\[0\].terms"),
        ([{"terms": [], "examples": "x"}] * 3, r"cluster_descriptions\[0\].examples"),
        ([{"terms": [], "examples": [], "example_rows": ["a"]}] * 3, "example_rows"),
        ([[]] * 3, "JSON object"),
    ],
)
def test_malformed_descriptions_are_refused_by_name(described, descriptions, problem):
    data = {**described.to_dict(), "cluster_descriptions": descriptions}
    with pytest.raises(InvalidArgumentError, match=problem):
        Manifest.from_dict(data)


def test_the_trainer_describes_its_clusters_in_manifests_cards_and_report(tmp_path, capsys):
    from hf_idsel.hub_layout import STAGING_DIR

    trainer = make_trainer(tmp_path, budget=24, scorer="loss")
    descriptions = trainer.cluster_descriptions
    assert len(descriptions) == trainer.k == 4
    # Each planted topic's cluster is named by the words of its question and answer.
    expected = {0: {"colour", "blue"}, 1: {"plus"}, 2: {"hello", "say"}, 3: {"subscribe", "cookies", "click"}}
    topics = []
    for cluster, description in enumerate(descriptions):
        (topic,) = {trainer.pool["topic"][row] for row in description["example_rows"]}
        topics.append(topic)
        assert expected[topic] & set(description["terms"]), (topic, description)
    assert sorted(topics) == [0, 1, 2, 3]
    assert trainer.selection_manifest("default").cluster_descriptions == descriptions
    trainer.train()
    staged = os.path.join(trainer.args.output_dir, STAGING_DIR)
    assert Manifest.load(staged).cluster_descriptions == descriptions
    # Each round file says in words what the clusters its weights move are.
    round_file = json.load(open(os.path.join(trainer.args.output_dir, "selection", "round_1.json")))
    assert round_file["cluster_terms"] == [", ".join(d["terms"][:3]) for d in descriptions]
    card = open(os.path.join(staged, "README.md"), encoding="utf-8").read()
    assert "**Clusters the run favoured**" in card and ", ".join(descriptions[0]["terms"]) in card
    assert main(["report", trainer.args.output_dir]) == 0
    printed = capsys.readouterr().out
    assert "favoured (weight after round 3" in printed and "cut (weight after round 3" in printed
    assert all(", ".join(d["terms"][:3]) in printed for d in descriptions)


@pytest.mark.slow
def test_descriptions_name_the_domains_of_the_builtin_pool(cache_dir):
    """Real rows, the packaged MiniLM, k=4: each cluster's terms and examples name one of the pool's four domains."""
    pool = hf_idsel.load_builtin_pool({"gsm8k": 40, "humaneval": 40, "chitchat": 40, "mmlu": 40})
    # selection seed 1: k-means (not the descriptions) finds the four sources; with seed 0 it merges gsm8k
    # with mmlu's elementary-mathematics questions and splits chit-chat in two.
    _, manifest = diverse_select(pool, 40, k=4, seed=1, cache_dir=cache_dir, return_manifest=True)
    domains = {
        "gsm8k": {"total", "cost", "day", "days", "week", "hours", "minutes", "money", "dollars", "does", "many"},
        "humaneval": {"def", "python", "function", "return", "list", "string", "complete"},
        "chitchat": {"like", "really", "think", "hey", "hello", "haha", "love", "yeah", "just", "good"},
        "mmlu": {"answer", "letter", "option", "choice", "correct", "question"},
    }
    reads_like = {
        "gsm8k": lambda text: any(c.isdigit() for c in text),  # a word problem with numbers
        "humaneval": lambda text: "def " in text,
        "chitchat": lambda text: "multiple-choice" not in text and "def " not in text,
        "mmlu": lambda text: "multiple-choice question" in text,
    }
    named = []
    for description in manifest.cluster_descriptions:
        matches = [d for d, words in domains.items() if len(words & set(description["terms"])) >= 3]
        assert len(matches) == 1, description
        domain = matches[0]
        named.append(domain)
        # The representative rows come from that source, and read like it.
        assert {pool["origin"][row] for row in description["example_rows"]} == {domain}
        assert all(reads_like[domain](example) for example in description["examples"]), description
    assert sorted(named) == sorted(domains)
