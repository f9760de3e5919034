"""Publishing through the real clients against the loopback Hub (tests/hub_server.py)."""

from __future__ import annotations

import json
import logging
import os
import time

import datasets
import pytest
from huggingface_hub import DatasetCard, ModelCard

import hf_idsel
from hf_idsel.cli import main
from hf_idsel.errors import InvalidArgumentError, PushError
from hf_idsel.hub import push_folder, push_selection
from hf_idsel.hub_layout import read_plan
from helpers import assert_truthful, make_pool, make_trainer, single_thread
from hf_idsel.pool import load_pool

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def selection(blob_pool):
    return hf_idsel.diverse_select(blob_pool, 40, k=6, embedding_column="embedding", seed=0, return_manifest=True)


def test_push_selection_round_trip(hub, selection, blob_pool, tmp_path):
    subset, manifest = selection
    repo = hub.repo("kmq")
    url = push_selection(subset, repo, manifest=manifest, local_dir=str(tmp_path / "stage"))
    assert url.endswith(f"/datasets/{repo}")

    rows = datasets.load_dataset(repo, split="train")
    assert rows["source_index"] == subset["source_index"] and rows["cluster"] == subset["cluster"]
    assert rows["text"] == subset["text"]
    files = hub.server.files(repo)
    assert files["selection.png"].startswith(PNG)
    assert hf_idsel.Manifest.load(files["manifest.json"].decode()).selected_digest == manifest.selected_digest
    # The card went last and kept the `configs` metadata datasets wrote.
    assert hub.server.commits(repo, "dataset")[-1].message == "hf_idsel: dataset card"
    card = DatasetCard.load(repo)
    assert {"hf_idsel", "data-selection"} <= set(card.data.tags)
    assert card.data.configs[0]["config_name"] == "default"
    assert "## How the rows were chosen" in card.text and "| method | kmq |" in card.text
    assert "| k (clusters) | 6, fixed by the user |" in card.text and "| seed | 0 |" in card.text
    assert "![" in card.text and "(selection.png)" in card.text
    assert f'`load_dataset("{repo}", "default")`' in card.text and f'load_selection("{repo}", pool=pool)' in card.text
    assert_truthful(card.text, [repo])

    again = hf_idsel.load_selection(repo, blob_pool)
    assert again["source_index"] == subset["source_index"]
    with pytest.raises(InvalidArgumentError, match="round_9"):
        hf_idsel.load_selection(repo, blob_pool, config="round_9")


def test_card_inherits_the_pools_license_and_language_and_load_selection_finds_the_pool(hub, tmp_path):
    pool_repo = hub.repo("pool")
    pool = datasets.Dataset.from_dict(
        {
            "prompt": [f"Question {i} about {'cats' if i % 2 else 'rockets'}?" for i in range(40)],
            "completion": [f"Answer {i}." for i in range(40)],
            "embedding": [[1.0, 0.0] if i % 2 else [0.0, 1.0] for i in range(40)],
        }
    )
    pool.push_to_hub(pool_repo)
    card = DatasetCard.load(pool_repo)
    card.data.license, card.data.language = "cc-by-4.0", ["en"]
    card.push_to_hub(pool_repo)

    loaded = datasets.load_dataset(pool_repo, split="train")
    subset, manifest = hf_idsel.diverse_select(loaded, 10, k=2, embedding_column="embedding", return_manifest=True)
    repo = hub.repo("subset")
    push_selection(subset, repo, manifest=manifest, pool_id=pool_repo, local_dir=str(tmp_path / "stage"), private=True)
    assert hub.server.is_private(repo, "dataset")
    card = DatasetCard.load(repo)
    assert card.data.source_datasets == [pool_repo]
    assert card.data.license == "cc-by-4.0" and card.data.language == ["en"]
    # The pool by its reference (a link to the Hub dataset), and where the licence comes from.
    assert f"| pool | [{pool_repo}](https://huggingface.co/datasets/{pool_repo}); 40 rows, content digest `" in card.text
    assert "The pool's own dataset card gives its licence as `cc-by-4.0`" in card.text
    # No pool passed: the manifest names it, load_selection fetches it and checks its digest.
    rebuilt = hf_idsel.load_selection(repo)
    assert rebuilt["source_index"] == subset["source_index"] and rebuilt["prompt"] == subset["prompt"]


def test_bad_token_stops_with_what_to_do_and_keeps_everything_locally(hub, selection, tmp_path, caplog):
    subset, manifest = selection
    repo, stage = hub.repo("denied"), str(tmp_path / "stage")
    secret = "hf_" + "x" * 30
    with caplog.at_level(logging.DEBUG), pytest.raises(PushError) as info:
        push_selection(subset, repo, manifest=manifest, local_dir=stage, token=secret)
    err = info.value
    assert err.status == 401 and err.pushed == [] and err.not_pushed[0] == "repo"
    assert "hf auth login" in str(err) and f"hf-idsel push {os.path.abspath(stage)}" in str(err)
    assert secret not in str(err) and secret not in caplog.text
    assert not hub.server.repo_exists(repo, "dataset")
    # Nothing lost: the rows, manifest, plot and card are staged; the CLI finishes the push.
    assert datasets.Dataset.from_parquet(os.path.join(stage, "data", "default.parquet"))["source_index"] == subset["source_index"]
    assert os.path.isfile(os.path.join(stage, "manifest.json")) and os.path.isfile(os.path.join(stage, "README.md"))
    assert main(["push", stage]) == 0
    assert datasets.load_dataset(repo, split="train")["source_index"] == subset["source_index"]
    assert read_plan(stage)["done"] == ["repo", "config:default", "files", "card"]


def test_server_errors_are_retried_then_succeed(hub, selection, tmp_path, caplog):
    subset, manifest = selection
    repo = hub.repo("flaky")
    hub.server.fail(status=500, path_regex=f"/api/datasets/{repo}/commit/", times=2, method="POST")
    with caplog.at_level(logging.WARNING, logger="hf_idsel.publish"):
        push_selection(subset, repo, manifest=manifest, local_dir=str(tmp_path / "stage"))
    assert caplog.text.count("retry") == 2
    assert datasets.load_dataset(repo, split="train")["source_index"] == subset["source_index"]


def test_connection_dropped_mid_push_then_finished_from_the_staged_copy(hub, selection, tmp_path):
    subset, manifest = selection
    repo, stage = hub.repo("dropped"), str(tmp_path / "stage")
    # The connection drops on the rows' commit and on its one retry.
    hub.server.drop(path_regex=f"/api/datasets/{repo}/commit/", times=2, method="POST")
    with pytest.raises(PushError) as info:
        push_selection(subset, repo, manifest=manifest, local_dir=stage, max_retries=1)
    err = info.value
    assert err.status is None and err.pushed == ["repo"] and err.not_pushed == ["config:default", "files", "card"]
    assert "after 1 retries" in str(err)
    assert push_folder(stage).endswith(repo)
    assert datasets.load_dataset(repo, split="train")["source_index"] == subset["source_index"]
    assert "manifest.json" in hub.server.files(repo)


@pytest.mark.parametrize("failure", [408, 429, 500, 502, 503, 504, "dropped"])
def test_every_retryable_failure_is_retried_by_hf_idsel_and_never_shows_the_token(hub, selection, tmp_path, caplog, failure):
    import secrets
    import warnings

    subset, manifest = selection
    token = f"hf_{failure}secret{secrets.token_hex(12)}"  # a token of its own per case, to look for in every output
    hub.server.add_token(token, hub.user)

    def inject(repo, times):
        commit = f"/api/datasets/{repo}/commit/"
        if failure == "dropped":
            hub.server.drop(path_regex=commit, times=times, method="POST")
        else:
            hub.server.fail(status=failure, path_regex=commit, times=times, method="POST", headers={"Retry-After": "0"})

    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Two failures in a row: hf_idsel's own retries (not the client's) carry the push through.
        repo = hub.repo(f"matrix-{failure}")
        inject(repo, 2)
        push_selection(subset, repo, manifest=manifest, local_dir=str(tmp_path / "a"), token=token, backoff=0.01)
        ours = [r for r in caplog.records if r.name == "hf_idsel.publish" and r.msg.startswith("Pushing %s to %s failed")]
        assert len(ours) == 2 and hub.server.pending_failures() == 0
        assert {"manifest.json", "README.md"} <= set(hub.server.files(repo))
        # A failure that outlasts the retries stops with what is left, and the staged copy finishes later.
        stuck, stage = hub.repo(f"stuck-{failure}"), str(tmp_path / "b")
        inject(stuck, 10)
        with pytest.raises(PushError) as info:
            push_selection(subset, stuck, manifest=manifest, local_dir=stage, token=token, max_retries=1, backoff=0.01)
        hub.server.clear_failures()
        assert push_folder(stage, token=token).endswith(stuck)
    err = info.value
    assert err.status == (None if failure == "dropped" else failure) and err.not_pushed[0] == "config:default"
    assert f"hf-idsel push {os.path.abspath(stage)}" in str(err)
    shown = [str(err), caplog.text] + [str(w.message) for w in caught]
    assert not any(token in text for text in shown)


def test_conflict_is_reported_as_a_conflict(hub, selection, tmp_path):
    subset, manifest = selection
    repo = hub.repo("conflict")
    hub.server.fail(status=409, path_regex=f"/api/datasets/{repo}/commit/", times=10, method="POST")
    with pytest.raises(PushError, match="conflict") as info:
        push_selection(subset, repo, manifest=manifest, local_dir=str(tmp_path / "stage"), max_retries=1)
    assert info.value.status == 409 and info.value.pushed == ["repo"]


def test_bad_arguments_fail_before_any_request(hub, selection, blob_pool, tmp_path, monkeypatch):
    subset, manifest = selection
    monkeypatch.chdir(tmp_path)  # where the default staging folder would appear
    before = len(hub.server.requests)
    with pytest.raises(InvalidArgumentError, match="repo_id"):
        push_selection(subset, "no-namespace", manifest=manifest)
    with pytest.raises(InvalidArgumentError, match="source_index"):
        push_selection(blob_pool, hub.repo(), manifest=manifest)
    with pytest.raises(InvalidArgumentError, match="manifest"):
        push_selection(subset.select(range(5)), hub.repo(), manifest=manifest)
    # No process-wide memory of manifests: even the untouched subset needs its manifest passed.
    with pytest.raises(InvalidArgumentError, match=r"`manifest` is required.*return_manifest=True.*manifest="):
        push_selection(subset, hub.repo())
    assert len(hub.server.requests) == before and not os.path.exists("hf_idsel_push")


def test_trainer_pushes_each_round_and_a_model_that_loads_back(hub, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    model_repo = hub.repo("tiny-sft")
    with single_thread():
        trainer = make_trainer(
            tmp_path, budget=24, scorer="loss", push_to_hub=True, hub_model_id=model_repo, hub_license="apache-2.0",
            save_strategy="epoch", hub_strategy="every_save",
        )
        trainer.train()
        trainer.push_to_hub()
    dataset_repo = f"{model_repo}-selection"
    rounds = trainer.selection.rounds
    for r in rounds:
        rows = datasets.load_dataset(dataset_repo, f"round_{r['round']}", split="train")
        assert rows["source_index"] == sorted(r["selected"]) and set(rows["selection_round"]) == {r["round"]}
    everything = datasets.load_dataset(dataset_repo, split="train")
    assert len(everything) == 24
    rebuilt = hf_idsel.load_selection(dataset_repo, make_pool(), config="round_2")
    assert rebuilt["source_index"] == sorted(rounds[1]["selected"])
    files = hub.server.files(dataset_repo)
    assert {"selection/round_1.json", "manifests/round_3.json", "manifest.json", "selection.png"} <= set(files)
    card = DatasetCard.load(dataset_repo)
    assert [c["config_name"] for c in card.data.configs] == ["default", "round_1", "round_2", "round_3"]
    assert "| scorer | loss |" in card.text and "### Rounds" in card.text
    assert f'`load_dataset("{dataset_repo}", "round_2")`' in card.text and "Not on the Hub" not in card.text
    assert_truthful(card.text, [dataset_repo])

    model = AutoModelForCausalLM.from_pretrained(model_repo)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, trainer.model.state_dict()[name].cpu()), name
    model_card = ModelCard.load(model_repo)
    assert model_card.data.license == "apache-2.0" and model_card.data.datasets == [dataset_repo]
    assert "arxiv:2409.11378" in model_card.data.tags and "hf_idsel" in model_card.data.tags
    assert "## How the training data was chosen" in model_card.text and "| learning_rate | 0.005 |" in model_card.text
    assert f"[{dataset_repo}](https://huggingface.co/datasets/{dataset_repo})" in model_card.text
    assert f'AutoModelForCausalLM.from_pretrained("{model_repo}")' in model_card.text and "hf-idsel push" not in model_card.text
    assert_truthful(model_card.text, [dataset_repo, model_repo])
    # hub_strategy pushed checkpoints during training; the staging folder never reached the model repo.
    model_files = hub.server.files(model_repo, "model")
    assert not any(path.startswith("_hf_idsel") for path in model_files)
    assert {"model.safetensors", "config.json", "selection/round_3.json"} <= set(model_files)
    messages = [c.message for c in hub.server.commits(model_repo, "model")]
    assert messages[-1] == "End of training" and sum("Training in progress" in m for m in messages) == 3, messages


def test_trainer_keeps_training_when_round_pushes_fail_and_hf_idsel_push_finishes_them(hub, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("hf_idsel.publish.time.sleep", lambda seconds: None)  # the retries' back-off, not their count
    model_repo = hub.repo("offline-rounds")
    dataset_repo = f"{model_repo}-selection"
    # No row reaches the dataset repo during the whole run: every retry of every round's commit fails.
    hub.server.fail(status=503, path_regex=f"/api/datasets/{dataset_repo}/commit/", times=1000, method="POST")
    with single_thread(), caplog.at_level(logging.WARNING, logger="hf_idsel.trainer"):
        trainer = make_trainer(
            tmp_path, budget=24, push_to_hub=True, hub_model_id=model_repo, hub_license="apache-2.0",
            save_strategy="no", hub_strategy="end",
        )
        trainer.train()
    hub.server.clear_failures()
    assert [r["round"] for r in trainer.selection.rounds] == [1, 2, 3]  # training went on
    assert caplog.text.count("were not pushed yet (training goes on)") == 3
    assert not any(path.startswith("data/") for path in hub.server.files(dataset_repo))
    trainer.save_model()
    assert main(["push", trainer.args.output_dir, "--model-repo-id", model_repo]) == 0
    for r in trainer.selection.rounds:
        rows = datasets.load_dataset(dataset_repo, f"round_{r['round']}", split="train")
        assert rows["source_index"] == sorted(r["selected"])
    assert "model.safetensors" in hub.server.files(model_repo, "model")


def test_trainer_refuses_to_push_without_a_license_before_training(hub, tmp_path):
    before = len(hub.server.requests)
    with pytest.raises(InvalidArgumentError, match="hub_license"):
        make_trainer(tmp_path, push_to_hub=True, hub_model_id=hub.repo("nolicense"))
    assert not any("repos/create" in path for _, path, _ in hub.server.requests[before:])


def test_cli_select_push_and_push_of_a_folder_never_pushed(hub, tmp_path, capsys):
    rows = [{"instruction": f"Translate sentence {i} into French.", "output": f"Phrase {i}."} for i in range(20)]
    rows += [{"instruction": f"Compute {i} times 3.", "output": f"{3 * i}"} for i in range(20)]
    pool_file = tmp_path / "pool.jsonl"
    pool_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pushed, local = hub.repo("cli-pushed"), hub.repo("cli-later")
    out = tmp_path / "out"
    argv = ["select", str(pool_file), "--budget", "10", "--k", "2", "--out", str(out), "--push-to-hub", pushed]
    assert main(argv + ["--license", "mit"]) == 0
    assert f"Pushed to {hub.endpoint}/datasets/{pushed}" in capsys.readouterr().out
    assert DatasetCard.load(pushed).data.license == "mit"
    subset = datasets.Dataset.from_parquet(str(out / "subset.parquet"))
    assert datasets.load_dataset(pushed, split="train")["source_index"] == subset["source_index"]
    # The local manifest still finds the local pool file by itself; the pushed one names the file, not its path.
    assert hf_idsel.load_selection(str(out))["instruction"] == subset["instruction"]
    with pytest.raises(InvalidArgumentError, match="pass `pool=`"):
        hf_idsel.load_selection(pushed)
    assert hf_idsel.load_selection(pushed, pool=load_pool(str(pool_file)))["instruction"] == subset["instruction"]

    later = tmp_path / "later"
    assert main(["select", str(pool_file), "--budget", "6", "--k", "2", "--out", str(later)]) == 0
    assert main(["push", str(later)]) == 2
    assert "--repo-id" in capsys.readouterr().err
    assert main(["push", str(later), "--repo-id", local, "--private"]) == 0
    assert hub.server.is_private(local, "dataset")
    assert len(datasets.load_dataset(local, split="train")) == 6


def test_the_push_engine_and_the_cards_never_import_each_other():
    """The layout lives in hub_layout; the push engine and the cards import it and never each other, not even inside
    a function; only hub.py, which joins them, imports both."""
    import ast

    package = os.path.dirname(hf_idsel.__file__)

    def imported(module):
        tree = ast.parse(open(os.path.join(package, f"{module}.py"), encoding="utf-8").read())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hf_idsel"):
                names.add(node.module.split(".")[1] if "." in node.module else "hf_idsel")
        return names

    assert not {"cards", "hub"} & imported("publish")
    assert not {"publish", "hub"} & imported("cards")
    assert imported("hub_layout") == {"errors"}
    assert {"cards", "publish", "hub_layout"} <= imported("hub")


def test_a_corrupt_push_plan_is_refused_by_name(tmp_path, capsys):
    from hf_idsel.hub_layout import PUSH_FILE

    folder = tmp_path / "staged"
    folder.mkdir()
    plan = folder / PUSH_FILE
    plan.write_text('{"repo_id": "me/x", "configs": ["default"], "do')
    with pytest.raises(InvalidArgumentError, match="truncated or corrupt") as info:
        read_plan(str(folder))
    assert str(plan) in str(info.value)
    plan.write_text(json.dumps({"repo_id": "me/x", "configs": "default", "done": []}))
    with pytest.raises(InvalidArgumentError, match="not a push plan written by hf_idsel"):
        read_plan(str(folder))
    assert main(["push", str(folder)]) == 2
    assert str(plan) in capsys.readouterr().err


# ---- a Hub that never answers: timeouts, then PushError ----


@pytest.mark.parametrize("stalled", ["/api/repos/create", "/commit/"])
def test_a_hub_that_accepts_and_never_answers_ends_in_a_push_error_within_the_timeouts(hub, selection, tmp_path, stalled):
    subset, manifest = selection
    repo, stage = hub.repo("stalled"), str(tmp_path / "stage")
    hub.server.stall(stalled, times=100, method="POST")
    start = time.monotonic()
    with pytest.raises(PushError) as info:
        push_selection(subset, repo, manifest=manifest, local_dir=stage, timeout=1.0, max_retries=1, backoff=0.01)
    elapsed = time.monotonic() - start
    err = info.value
    assert err.status is None and "after 1 retries" in str(err) and "did not answer in time" in str(err)
    assert err.not_pushed[0] == ("repo" if "create" in stalled else "config:default")
    assert elapsed < 30, elapsed  # without timeouts: forever
    hub.server.clear_failures()
    assert push_folder(stage).endswith(repo)  # the staged copy finishes once the Hub answers again
    assert datasets.load_dataset(repo, split="train")["source_index"] == subset["source_index"]


def test_the_trainer_constructor_ends_in_a_push_error_when_the_hub_never_answers(hub, tmp_path, monkeypatch):
    """push_to_hub=True creates the model repo in Trainer.__init__: with the read timeout from the environment, a Hub
    that never answers stops the constructor with PushError instead of holding it."""
    from hf_idsel.hub_client import CONNECT_TIMEOUT_ENV, READ_TIMEOUT_ENV

    monkeypatch.setenv(READ_TIMEOUT_ENV, "1")
    model_repo = hub.repo("stalled-model")
    hub.server.stall("/api/repos/create", times=100, method="POST")
    start = time.monotonic()
    with pytest.raises(PushError, match="creating the model repo on the Hub failed") as info:
        make_trainer(tmp_path, push_to_hub=True, hub_model_id=model_repo, hub_license="apache-2.0")
    assert time.monotonic() - start < 60 and info.value.not_pushed == ["model repo"]
    assert "hf-idsel push OUTPUT_DIR" in str(info.value) and "\n" not in str(info.value)
    hub.server.clear_failures()

    # A bad setting is named before any request.
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "soon")
    before = len(hub.server.requests)
    with pytest.raises(InvalidArgumentError, match=CONNECT_TIMEOUT_ENV):
        make_trainer(tmp_path, push_to_hub=True, hub_model_id=model_repo, hub_license="apache-2.0")
    assert len(hub.server.requests) == before


def test_timeouts_apply_only_inside_hf_idsel_calls_and_bad_values_are_refused(hub, selection, tmp_path):
    import httpx2
    from huggingface_hub import get_session

    from hf_idsel.hub_client import HubTimeouts, hub_timeouts

    subset, manifest = selection
    assert HubTimeouts.resolve((2, 30)) == HubTimeouts(2.0, 30.0) and HubTimeouts.resolve(5) == HubTimeouts(5.0, 5.0)
    for bad in (0, -1, float("inf"), "x", (1, 2, 3), True):
        with pytest.raises(InvalidArgumentError, match="timeout"):
            push_selection(subset, hub.repo(), manifest=manifest, local_dir=str(tmp_path / "x"), timeout=bad)
    seen = []
    with hub_timeouts((3, 7)):
        request = get_session().build_request("GET", hub.endpoint, timeout=None)  # huggingface_hub passes None
        for hook in get_session().event_hooks["request"]:
            hook(request)
        seen.append(request.extensions["timeout"])
    request = get_session().build_request("GET", hub.endpoint, timeout=None)
    for hook in get_session().event_hooks["request"]:
        hook(request)
    seen.append(request.extensions["timeout"])
    assert seen[0] == {"connect": 3.0, "read": 7.0, "write": 7.0, "pool": 3.0}
    assert seen[1] == httpx2.Timeout(None).as_dict()  # the user's own calls keep huggingface_hub's behaviour


# ---- staged rows are uploaded as staged, or not at all ----


def _edit_rows(path):
    """Rewrite a parquet file with one text changed and `source_index` untouched: what the old check let through."""
    rows = datasets.Dataset.from_parquet(str(path))
    column = "instruction" if "instruction" in rows.column_names else "text"
    edited = rows.map(lambda row, i: {column: "EDITED" if i == 0 else row[column]}, with_indices=True)
    edited.to_parquet(str(path))


def _pool_file(tmp_path, name="pool.jsonl"):
    rows = [{"instruction": f"Translate sentence {i} into French.", "output": f"Phrase {i}."} for i in range(20)]
    rows += [{"instruction": f"Compute {i} times 3.", "output": f"{3 * i}"} for i in range(20)]
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_push_refuses_rows_edited_after_select_or_staging(hub, selection, tmp_path, capsys):
    def one_line_error(argv, *needles):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err, err
        for needle in needles:
            assert needle in err, err
        return err

    # A `select --out` folder never pushed: subset.parquet edited afterwards is refused, naming the fix.
    out, repo = tmp_path / "out", hub.repo("edited")
    assert main(["select", str(_pool_file(tmp_path)), "--budget", "8", "--k", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    _edit_rows(out / "subset.parquet")
    one_line_error(["push", str(out), "--repo-id", repo], str(out / "subset.parquet"), "changed after", "--overwrite")
    (out / "subset.parquet.sha256").unlink()  # a folder written before select recorded the digest
    one_line_error(["push", str(out), "--repo-id", repo], "no .sha256 digest", "--overwrite")
    assert not hub.server.repo_exists(repo, "dataset")

    # A staged push that stopped: the rows staged in data/ are checked before anything is sent.
    subset, manifest = selection
    stage, repo = tmp_path / "stage", hub.repo("staged-edit")
    hub.server.fail(status=503, path_regex="/api/repos/create", times=10, method="POST")
    with pytest.raises(PushError):
        push_selection(subset, repo, manifest=manifest, local_dir=str(stage), max_retries=0)
    hub.server.clear_failures()
    staged_rows = stage / "data" / "default.parquet"
    original = staged_rows.read_bytes()
    _edit_rows(staged_rows)
    before = len(hub.server.requests)
    with pytest.raises(InvalidArgumentError, match="changed after it was staged"):
        push_folder(str(stage))
    one_line_error(["push", str(stage)], str(staged_rows), "hf-idsel select ... --overwrite")
    staged_rows.unlink()
    one_line_error(["push", str(stage)], "is gone")
    assert len(hub.server.requests) == before  # refused before any request
    staged_rows.write_bytes(original)

    # A plan staged before digests were recorded: refused (its files cannot be told from edited ones), not trusted.
    plan_path = stage / "hf_idsel_push.json"
    plan = json.loads(plan_path.read_text())
    plan_path.write_text(json.dumps({k: v for k, v in plan.items() if k != "digests"}))
    one_line_error(["push", str(stage)], "records no digest", "older hf_idsel")
    plan_path.write_text(json.dumps(plan))
    assert push_folder(str(stage)).endswith(repo)
    assert datasets.load_dataset(repo, split="train")["text"] == subset["text"]


def test_push_of_a_folder_that_is_not_staged_is_one_line(hub, tmp_path, capsys):
    def one_line_error(argv, needle):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("hf-idsel push: error:") and "\n" not in err and needle in err, err

    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(["push", str(empty)], "holds nothing to push")
    (empty / "manifest.json").write_text("{}")
    one_line_error(["push", str(empty)], "holds nothing to push")
    (empty / "_hf_idsel_selection").mkdir()  # a trainer output_dir whose staging never finished
    one_line_error(["push", str(empty)], "holds nothing to push")
    one_line_error(["push", str(tmp_path / "missing")], "is not a folder")
    out = tmp_path / "out"
    assert main(["select", str(_pool_file(tmp_path)), "--budget", "8", "--k", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    (out / "subset.parquet").write_bytes(b"PAR1 not really")
    from hf_idsel.hub_layout import write_file_digest

    write_file_digest(str(out / "subset.parquet"))  # digest and bytes agree: the file itself is broken
    one_line_error(["push", str(out), "--repo-id", hub.repo()], "not a readable parquet file")
    one_line_error(["push", str(out), "--repo-id", hub.repo(), "--license", "Not A Licence"], "licence id")


# ---- provenance: no local path published, licences on every push path ----


def _files_holding(files: dict, needles) -> list[str]:
    return [name for name, content in files.items() for needle in needles if needle.encode() in content]


def test_a_pushed_selection_of_a_local_file_publishes_no_local_path(hub, tmp_path, capsys, caplog, monkeypatch):
    pool_file = _pool_file(tmp_path)
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(json.dumps({"instruction": "Compute 7 times 3.", "output": "21"}) + "\n")
    out, repo = tmp_path / "out", hub.repo("local-file")
    argv = ["select", str(pool_file), "--budget", "10", "--k", "2", "--out", str(out), "--exclude", str(eval_file)]
    assert main(argv + ["--exclude-split", "train"]) == 0
    with caplog.at_level(logging.WARNING, logger="hf_idsel.hub"):
        assert main(["push", str(out), "--repo-id", repo, "--license", "cc-by-4.0"]) == 0
    assert "local file pool.jsonl" in caplog.text and "cannot be rebuilt elsewhere" in caplog.text

    files = hub.server.files(repo)
    assert {"manifest.json", "README.md", "selection.png"} <= set(files) and any(f.endswith(".parquet") for f in files)
    # Every byte of every pushed file (parquet metadata included): no absolute path of this machine.
    local = {str(tmp_path), os.path.realpath(tmp_path), str(pool_file), str(out.resolve())}
    assert _files_holding(files, local) == []
    pushed = hf_idsel.Manifest.load(files["manifest.json"].decode())
    digest = pushed.pool["digest"]
    assert pushed.pool["name"] == "pool.jsonl" and pushed.pool["source"] == {"file": "pool.jsonl", "digest": digest}
    assert pushed.decontamination["exclude"]["name"] == "eval.jsonl"
    assert pushed.decontamination["exclude"]["source"] == {"file": "eval.jsonl", "split": "train"}
    # The local manifest keeps the path, so the selection still rebuilds on this machine by itself.
    assert hf_idsel.Manifest.load(str(out)).pool["source"]["path"] == str(pool_file)

    card = DatasetCard.load(repo)
    assert card.data.source_datasets is None and card.data.license == "cc-by-4.0"
    assert "huggingface.co/datasets//" not in card.text and "https://huggingface.co/datasets/pool.jsonl" not in card.text
    assert f"the local file `pool.jsonl` (not on the Hub); 40 rows, content digest `{digest}`" in card.text
    assert "**Made from a local file.**" in card.text and "can be rebuilt only with that file at hand" in card.text
    assert "released this selection under `cc-by-4.0`" in card.text
    assert "matching items of the evaluation set eval.jsonl, split train (1 rows)" in card.text  # not "json"
    assert_truthful(card.text, [repo])
    # The rebuild snippet works where the file is (here, by its name) and checks the rows.
    from helpers import code_blocks

    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(code_blocks(card.text, "Rebuild the selection"), scope)
    assert scope["subset"]["source_index"] == datasets.load_dataset(repo, split="train")["source_index"]


def test_licences_on_every_push_path(hub, selection, tmp_path, capsys):
    subset, manifest = selection
    repo = hub.repo("licensed")
    push_selection(subset, repo, manifest=manifest, local_dir=str(tmp_path / "a"), license="apache-2.0")
    assert DatasetCard.load(repo).data.license == "apache-2.0"
    # hf-idsel push DIR --hub_license (TRL's spelling) on a staged folder: the card is written again with it.
    assert main(["push", str(tmp_path / "a"), "--hub_license", "cc-by-sa-4.0"]) == 0
    card = DatasetCard.load(repo)
    assert card.data.license == "cc-by-sa-4.0" and "released this selection under `cc-by-sa-4.0`" in card.text
    assert read_plan(str(tmp_path / "a"))["license"] == "cc-by-sa-4.0"
    before = len(hub.server.requests)
    with pytest.raises(InvalidArgumentError, match="licence id"):
        push_selection(subset, hub.repo(), manifest=manifest, local_dir=str(tmp_path / "b"), license="MIT License")
    assert len(hub.server.requests) == before
    # Without one, the card says how to set it.
    repo = hub.repo("unlicensed")
    push_selection(subset, repo, manifest=manifest, local_dir=str(tmp_path / "c"))
    card = DatasetCard.load(repo)
    assert card.data.license is None and "`hf-idsel push DIR --license <id>` sets one" in card.text
