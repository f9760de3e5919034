"""`load_selection`: exactly the recorded rows or a clear error, no code chosen by a manifest, clean errors for
malformed manifests, and manifests from before the column and cluster digests (tests/data/v1_*.json)."""

from __future__ import annotations

import json
import logging
import math
import os

import datasets
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import hf_idsel.embed
from helpers import examples
from hf_idsel import InvalidArgumentError, Manifest, SelectionMismatchError, diverse_select, load_selection
from hf_idsel.embed import DEFAULT_ENCODER, encoder_identity
from hf_idsel.errors import IdselError


DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture
def pool(blob_pool):
    """The conftest `blob_pool`: tests/data/v1_*.json were written from it (a change to it fails those tests)."""
    return blob_pool


@pytest.fixture
def selection(pool):
    subset, manifest = diverse_select(pool, 30, embedding_column="embedding", k=6, seed=4, return_manifest=True)
    return subset, manifest


def edited(manifest: Manifest, **changes) -> dict:
    data = manifest.to_dict()
    for key, value in changes.items():
        target = data
        *path, last = key.split("__")
        for part in path:
            target = target[part]
        target[last] = value
    return data


# ---- item 6: every returned column and the cluster ids are verified ----


def test_edited_text_under_unchanged_vectors_is_refused(selection, pool):
    subset, manifest = selection
    assert manifest.pool["digest_columns"] == ["embedding"]
    assert set(manifest.pool["column_digests"]) == set(pool.column_names)
    chosen = manifest.selected_indices[3]
    text = pool.map(lambda row, i: {"text": row["text"] + "!" if i == chosen else row["text"]}, with_indices=True)
    with pytest.raises(SelectionMismatchError, match=r"columns \['text'\]"):
        load_selection(manifest, text)
    # Vectors equal as float32 but not as stored (float64) are a change of a returned column too.
    nudged = pool.map(
        lambda row, i: {"embedding": [v + 1e-12 for v in row["embedding"]] if i == 5 else row["embedding"]}, with_indices=True
    )
    with pytest.raises(SelectionMismatchError, match=r"columns \['embedding'\] it read"):
        load_selection(manifest, nudged)
    assert load_selection(manifest, pool).to_dict() == subset.to_dict()


def test_edited_cluster_ids_are_refused(selection, pool, tmp_path):
    _, manifest = selection
    first = manifest.selected_clusters[0]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(edited(manifest, selected_clusters=[99] + manifest.selected_clusters[1:])))
    with pytest.raises(InvalidArgumentError, match=r"manifest\.json.*`selected_clusters\[0\]`=99 is not a cluster id in \[0, k=6\)"):
        load_selection(str(path), pool)
    # Another valid cluster, with the per-cluster counts edited to match: only the digest can tell.
    other = (first + 1) % manifest.k
    per_cluster = list(manifest.selected_per_cluster)
    per_cluster[first] -= 1
    per_cluster[other] += 1
    data = edited(manifest, selected_clusters=[other] + manifest.selected_clusters[1:], selected_per_cluster=per_cluster)
    with pytest.raises(SelectionMismatchError, match="selected_clusters .* do not match its clusters_digest"):
        load_selection(data, pool)
    # Rows in another order (same set, so selected_digest still matches) would misalign the cluster ids.
    swapped = edited(manifest, selected_indices=manifest.selected_indices[::-1])
    with pytest.raises(InvalidArgumentError, match="strictly ascending"):
        load_selection(swapped, pool)


def test_structural_checks_hold_without_digests(selection, pool):
    _, manifest = selection
    for changes, match in [
        ({"k": 7}, "`cluster_sizes` has 6 entries; `k`=7"),
        ({"selected_clusters": manifest.selected_clusters[:-1]}, "they must align"),
        ({"cluster_sizes": [c + 1 for c in manifest.cluster_sizes]}, "sum to `pool.num_rows`=250"),
        ({"selected_indices": manifest.selected_indices[:-1] + [250]}, r"`selected_indices\[29\]`=250 is not a row"),
        ({"pool__num_rows": 2**70}, r"`pool.num_rows`=\d+ must be an int in"),
        ({"format_version": 3}, "format_version 3; this hf_idsel reads up to 2. Upgrade hf_idsel"),
        ({"clusters_digest": None}, r"missing fields \['clusters_digest'\]"),
        ({"pool__column_digests": None}, "`pool` lacks `column_digests`"),
    ]:
        with pytest.raises(InvalidArgumentError, match=match):
            load_selection(edited(manifest, **changes), pool)


# ---- manifests written before the column and cluster digests (format_version 1) ----


@pytest.mark.parametrize(
    "name, unverified", [("v1_kmq_auto", ["text", "blob", "quality"]), ("v1_quality_k4", ["text", "blob"])]
)
def test_manifests_from_before_give_the_same_rows(name, unverified, pool, caplog):
    path = os.path.join(DATA, f"{name}.json")
    with open(os.path.join(DATA, f"{name}.rows.json")) as f:
        expected = json.load(f)
    with caplog.at_level(logging.WARNING, logger="hf_idsel.manifest"):
        subset = load_selection(path, pool)
    assert {c: subset[c] for c in expected} == expected
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "format_version 1" in warning and f"not the columns {unverified} nor the cluster ids" in warning
    # What they do cover is still checked: the columns the selection read, and the row ids.
    manifest = Manifest.load(path)
    read = manifest.pool["digest_columns"][0]
    with pytest.raises(SelectionMismatchError, match="content differs"):
        load_selection(path, pool.map(lambda row: {read: row[read][::-1]}))
    data = manifest.to_dict()
    ids = data["selected_indices"]
    gap = next(j for j in range(len(ids) - 1) if ids[j] + 1 < ids[j + 1])
    ids[gap] += 1  # another row, still ascending
    with pytest.raises(SelectionMismatchError, match="selected_digest"):
        load_selection(data, pool)
    # A re-run checks the cluster ids a version 1 manifest cannot.
    assert load_selection(path, pool, recompute=True)["cluster"] == expected["cluster"]


# ---- item 2: nothing in a manifest turns on trust_remote_code or picks an encoder ----


@pytest.fixture
def load_encoder_calls(monkeypatch):
    """Every call of `embed.load_encoder` (the one place an encoder is loaded), passed on to the real one."""
    calls = []
    real = hf_idsel.embed.load_encoder

    def recording(encoder, **kwargs):
        calls.append({"encoder": encoder, **kwargs})
        return real(encoder, **kwargs)

    monkeypatch.setattr(hf_idsel.embed, "load_encoder", recording)
    return calls


@pytest.fixture(scope="module")
def text_selection(tmp_path_factory):
    """A selection made with the packaged default encoder (real MiniLM) on a small text pool."""
    topics = ["the sea", "a violin", "tax law", "sourdough", "volcanoes", "chess openings"]
    pool = datasets.Dataset.from_dict({"text": [f"Tell me about {t}, part {i}." for i in range(4) for t in topics]})
    cache = str(tmp_path_factory.mktemp("cache"))
    subset, manifest = diverse_select(pool, 8, k=3, cache_dir=cache, return_manifest=True)
    return pool, subset, manifest


def test_a_manifest_cannot_turn_on_remote_code_or_choose_the_encoder(text_selection, load_encoder_calls, tmp_path, caplog):
    pool, subset, manifest = text_selection
    hostile = tmp_path / "manifest.json"
    hostile.write_text(json.dumps(edited(manifest, arguments__encoder="someone/encoder", arguments__trust_remote_code=True)))
    message = (
        r"encoder 'someone/encoder'.*without your consent.*"
        r"pass it yourself: `load_selection\(\.\.\., recompute=True, encoder='someone/encoder'\)`"
    )
    with pytest.raises(InvalidArgumentError, match=message):
        load_selection(str(hostile), pool, recompute=True, cache_dir=str(tmp_path / "cache"))
    assert load_encoder_calls == []  # refused before anything was loaded
    # Without recompute the recorded rows are checked and returned; the arguments are not used.
    assert load_selection(str(hostile), pool).to_dict() == subset.to_dict()

    # Consent is the caller's own `encoder=` (here the same model from its local folder): it is loaded, and
    # trust_remote_code stays the caller's (False), whatever the manifest says.
    local = encoder_identity(DEFAULT_ENCODER).location
    with caplog.at_level(logging.WARNING, logger="hf_idsel.load"):
        again = load_selection(str(hostile), pool, recompute=True, encoder=local, cache_dir=str(tmp_path / "cache"))
    assert again["source_index"] == subset["source_index"] and again["cluster"] == subset["cluster"]
    assert [(c["encoder"], c["trust_remote_code"]) for c in load_encoder_calls] == [(local, False)]
    assert "ignored: hf_idsel never takes trust_remote_code from a manifest" in caplog.text

    # The default encoder named by a manifest is what diverse_select uses anyway: replayed without asking,
    # still without trust_remote_code.
    load_encoder_calls.clear()
    default = edited(manifest, arguments__trust_remote_code=True)
    again = load_selection(default, pool, recompute=True, cache_dir=str(tmp_path / "cache2"))
    assert again["source_index"] == subset["source_index"]
    assert [c["trust_remote_code"] for c in load_encoder_calls] == [False]
    # A pinned revision of it is the manifest's choice again.
    with pytest.raises(InvalidArgumentError, match="encoder_revision='abc123'"):
        load_selection(edited(manifest, arguments__encoder_revision="abc123"), pool, recompute=True)


def test_hostile_manifest_on_the_hub_loads_nothing(hub, text_selection, load_encoder_calls, tmp_path):
    pool, _, manifest = text_selection
    repo = hub.repo("hostile")
    api = hub.api()
    api.create_repo(repo, repo_type="dataset")
    data = edited(manifest, arguments__encoder="someone/encoder", arguments__trust_remote_code=True)
    upload = dict(path_in_repo="manifest.json", repo_id=repo, repo_type="dataset")
    api.upload_file(path_or_fileobj=json.dumps(data).encode(), **upload)
    with pytest.raises(InvalidArgumentError, match=f"manifest.json of the dataset repo '{repo}'.*without your consent"):
        load_selection(repo, pool, recompute=True, cache_dir=str(tmp_path / "cache"))
    assert load_encoder_calls == []
    api.upload_file(path_or_fileobj=b'{"pool": {"num_rows": 2', **upload)
    with pytest.raises(InvalidArgumentError, match=f"manifest.json of the dataset repo '{repo}' is not valid JSON"):
        load_selection(repo, pool)


def test_overrides_are_the_callers_only(selection, pool):
    _, manifest = selection
    with pytest.raises(InvalidArgumentError, match=r"\['device'\] only apply to a re-run"):
        load_selection(manifest, pool, device="cpu")
    with pytest.raises(InvalidArgumentError, match=r"got \['k'\].*only \["):
        load_selection(manifest, pool, recompute=True, k=3)
    with pytest.raises(InvalidArgumentError, match=r"records \['cache_dir'\] among its `arguments`"):
        load_selection(edited(manifest, arguments__cache_dir="/somewhere"), pool, recompute=True)
    with pytest.raises(InvalidArgumentError, match="records `arguments.method`='random' but `method`='kmq'"):
        load_selection(edited(manifest, arguments__method="random"), pool, recompute=True)


# ---- item 9: malformed manifests and mistyped paths ----


def test_malformed_manifest_files_name_the_file(selection, pool, tmp_path):
    _, manifest = selection
    text = manifest.to_json()
    path = tmp_path / "manifest.json"
    cases = [
        (text[: len(text) // 2], "is not valid JSON .* at line"),
        ("", "is not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"k": ' + "9" * 5000 + "}", "not a readable JSON manifest"),
        ("[" * 100_000, "not a readable JSON manifest|not valid JSON"),
        (json.dumps({k: v for k, v in manifest.to_dict().items() if k != "pool"}), r"missing fields \['pool'\]"),
        (json.dumps(edited(manifest, k="6")), "`k`='6' must be an int"),
        (
            json.dumps(edited(manifest, selected_indices=[2**64] + manifest.selected_indices[1:])),
            r"`selected_indices\[0\]`=18446744073709551616 is not a row",
        ),
        (json.dumps(edited(manifest, pool__digest_columns="embedding")), "`pool.digest_columns`='embedding' must be a list"),
        (json.dumps(edited(manifest, pool__source={"path": 3})), "`pool.source.path`=3 must be a string"),
        (json.dumps(edited(manifest, seed=math.inf)), "`seed`=inf must be an int"),
    ]
    for content, match in cases:
        path.write_text(content)
        with pytest.raises(InvalidArgumentError, match=f"manifest '{path}'.*({match})"):
            load_selection(str(path), pool)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InvalidArgumentError, match="is not UTF-8 text"):
        load_selection(str(path), pool)


def test_a_mistyped_local_path_is_a_missing_local_file(selection, pool, tmp_path, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("a local path was looked up on the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.chdir(tmp_path)
    selection[1].save(str(tmp_path / "selection" / "manifest.json"))
    mistyped_paths = (
        "selection/manifst.json", "selection/run2", "./selection/x", "selection/a/manifest.json", "manifest.jsn", "~/x",
        "my run/x",
    )
    for mistyped in mistyped_paths:
        with pytest.raises(InvalidArgumentError, match="no such local file or folder"):
            load_selection(mistyped, pool)
    with pytest.raises(InvalidArgumentError, match=r"read as a local path: the folder 'selection' exists here"):
        load_selection("selection/run2", pool)
    with pytest.raises(InvalidArgumentError, match="`config` only applies to a Hub repo id"):
        load_selection("selection", pool, config="round_1")
    assert len(load_selection("selection", pool)) == 30


# ---- property: any damage to a manifest gives a clean error or the right rows ----

_BAD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([2**63, -1, 0, 10**40]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.sampled_from(["sha256:0", "", "round_1"]),
    st.lists(st.integers(min_value=-3, max_value=300), max_size=5),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)


def _paths(value, prefix=()):
    """Every place in a JSON value: dict keys and list items, nested."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value[:40]):
            yield from _paths(item, prefix + (i,))


@st.composite
def damaged_manifests(draw, text: str) -> str:
    data = json.loads(text)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        places = [p for p in _paths(data) if p]
        if not places:
            break
        place = draw(st.sampled_from(places))
        parent = data
        for part in place[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["drop", "replace", "replace", "duplicate"]))
        if action == "drop" or (action == "duplicate" and not isinstance(parent, list)):
            del parent[place[-1]]
        elif action == "replace":
            parent[place[-1]] = draw(_BAD_VALUES)
        else:
            parent.append(parent[place[-1]])
    out = json.dumps(data)
    damage = draw(st.sampled_from(["none", "none", "truncate", "garbage"]))
    if damage == "truncate":
        out = out[: draw(st.integers(min_value=0, max_value=len(out)))]
    elif damage == "garbage":
        at = draw(st.integers(min_value=0, max_value=len(out)))
        out = out[:at] + draw(st.text(min_size=1, max_size=6)) + out[at:]
    return out


@pytest.fixture
def manifest_file(tmp_path):
    return str(tmp_path / "manifest.json")


# The fixtures are built once per test, not per example: nothing an example does changes them.
_ONCE = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]


@settings(max_examples=examples(200), deadline=None, suppress_health_check=_ONCE)
@given(data=st.data())
def test_damaged_manifests_give_a_clean_error_or_the_right_rows(data, selection, pool, manifest_file):
    subset, manifest = selection
    text = data.draw(damaged_manifests(manifest.to_json()))
    with open(manifest_file, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(text)
    try:
        rows = load_selection(manifest_file, pool)
    except (InvalidArgumentError, SelectionMismatchError) as err:
        event(type(err).__name__)
        assert manifest_file in str(err), str(err)
        return
    event("the right rows")
    assert rows.to_dict() == subset.to_dict()


@settings(max_examples=examples(60), deadline=None, suppress_health_check=_ONCE)
@given(
    manifest=st.one_of(
        st.none(), st.integers(), st.text(max_size=30), st.binary(max_size=8), st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    ),
    config=st.one_of(st.none(), st.text(max_size=8), st.integers()),
    revision=st.one_of(st.none(), st.text(max_size=8), st.integers()),
    recompute=st.one_of(st.booleans(), st.none(), st.integers(), st.text(max_size=3)),
    overrides=st.dictionaries(
        st.sampled_from(["device", "k", "encoder", "x", "trust_remote_code"]), st.one_of(st.none(), st.integers()), max_size=2
    ),
)
def test_bad_load_selection_arguments_give_a_clean_error(
    manifest, config, revision, recompute, overrides, pool, monkeypatch
):
    import huggingface_hub

    def offline(*args, **kwargs):  # a repo-id-shaped text would be looked up: answer as an unreachable Hub does
        raise OSError("the Hub is out of reach in tests")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(IdselError):
        load_selection(manifest, pool, config=config, revision=revision, recompute=recompute, **overrides)


@settings(max_examples=examples(80), deadline=None, suppress_health_check=_ONCE)
@given(data=st.data())
def test_a_recompute_from_a_manifest_with_bad_recorded_arguments_is_clean(data, selection, pool):
    """`recompute=True` replays the recorded arguments: any bad value there meets the same checks as a call."""
    subset, manifest = selection
    key = data.draw(st.sampled_from(sorted(manifest.arguments)))
    damaged = edited(manifest, **{f"arguments__{key}": data.draw(_BAD_VALUES)})
    try:
        rows = load_selection(damaged, pool, recompute=True)
    except IdselError as err:
        event(f"{key}: {type(err).__name__}")
        return
    event("the recorded rows")  # a value that still selects the same rows
    assert rows["source_index"] == subset["source_index"]


def test_a_recompute_that_draws_other_rows_says_so(selection, pool):
    """`recompute=True` re-runs the recorded call: a manifest whose rows that call does not give is refused."""
    subset, manifest = selection
    assert load_selection(manifest, pool, recompute=True)["source_index"] == subset["source_index"]
    # Equal quotas draw other rows from these unequal clusters than the recorded proportional ones.
    with pytest.raises(SelectionMismatchError, match="differ"):
        load_selection(edited(manifest, arguments__quota="equal"), pool, recompute=True)

