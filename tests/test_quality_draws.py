"""The quality column and its temperature steer every kMQ draw the way the docs say (issue 29.2): `diverse_select` with
a row budget and with a token budget, and the trainer's rounds.

Each pool holds, in every cluster, rows of high quality (even row ids, +2) and of low quality (odd ids, -2). The draw
inside a cluster is a softmax over quality / temperature ("lower = greedier"): at a low temperature only high-quality
rows are taken; flipping the scores' sign takes the other rows; at a very high temperature the scores no longer count,
and the draw is the one made without a quality column (the same seeded Gumbel keys). In between, the share of
high-quality rows only grows as the temperature falls."""

import numpy as np
import pytest

from helpers import make_pool, make_tiny_tokenizer, make_trainer
from hf_idsel import diverse_select

TEMPERATURES = [0.2, 1.0, 4.0, 1e5]


def signed_quality(n: int, sign: float = 1.0) -> list[float]:
    return [sign * (2.0 if i % 2 == 0 else -2.0) for i in range(n)]


def high_share(rows) -> float:
    rows = np.asarray(rows)
    return float(np.mean(rows % 2 == 0))


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer()


@pytest.mark.parametrize("budget", [{"budget": 40}, {"max_tokens": 300}], ids=["rows", "tokens"])
def test_diverse_select_draws_follow_quality_and_its_temperature(blob_pool, cache_dir, tokenizer, budget):
    pool = blob_pool.remove_columns("quality").add_column("quality", signed_quality(len(blob_pool)))
    pool = pool.add_column("flipped", signed_quality(len(pool), -1.0))
    common = dict(k=6, seed=5, embedding_column="embedding", tokenizer=tokenizer, cache_dir=cache_dir, **budget)

    def rows(**kwargs):
        return diverse_select(pool, **common, **kwargs)["source_index"]

    plain = rows()
    shares = []
    for temperature in TEMPERATURES:
        chosen = rows(quality_column="quality", temperature=temperature)
        shares.append(high_share(chosen))
        if temperature == TEMPERATURES[0]:
            assert shares[0] == 1.0  # greedy: only the high-quality rows
            assert high_share(rows(quality_column="flipped", temperature=temperature)) == 0.0
    assert shares == sorted(shares, reverse=True) and shares[0] > shares[1] > shares[-1]
    # A temperature far above the scores leaves only the seeded Gumbel keys: the draw without quality.
    assert rows(quality_column="quality", temperature=TEMPERATURES[-1]) == plain
    assert 0.3 < high_share(plain) < 0.7


def test_the_trainers_rounds_follow_quality_and_its_temperature(tmp_path):
    pool = make_pool()  # 4 clusters of 24 rows; round 1 draws 16 rows
    pool = pool.add_column("quality", signed_quality(len(pool))).add_column("flipped", signed_quality(len(pool), -1.0))

    def round_one(name, **config):
        trainer = make_trainer(tmp_path / name, pool=pool, **config)
        assert trainer.current_round == 1
        return sorted(trainer.selection.current_rows)

    plain = round_one("plain")
    shares = [high_share(round_one(f"t{t}", quality_column="quality", quality_temperature=t)) for t in TEMPERATURES]
    assert shares[0] == 1.0
    assert high_share(round_one("flipped", quality_column="flipped", quality_temperature=TEMPERATURES[0])) == 0.0
    assert shares == sorted(shares, reverse=True) and shares[0] > shares[-1]
    assert round_one("flat", quality_column="quality", quality_temperature=TEMPERATURES[-1]) == plain
    assert 0.2 < high_share(plain) < 0.8
