"""Every recipe parses into the training entry point's config classes with the values its YAML says,
every accelerate config is one `accelerate launch` accepts, and every README names the real files."""

import os
import re
from pathlib import Path

import pytest
import torch
import yaml

from hf_idsel.train import BUILTIN_POOL, ScriptArguments, make_parser
from hf_idsel.trainer import IterativeSelectionConfig

REPO = Path(__file__).resolve().parents[1]
RECIPES_DIR = REPO / "recipes"
RECIPES = sorted(RECIPES_DIR.glob("*/iterative_sft/*.yaml"))
ACCELERATE_CONFIGS = sorted((RECIPES_DIR / "accelerate_configs").glob("*.yaml"))
PAPER_MODELS = {
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "llama-3-8b": "meta-llama/Meta-Llama-3-8B",
}
LAPTOP_MODEL = "smollm2-135m"


def _id(path: Path) -> str:
    return str(path.relative_to(RECIPES_DIR))


def load_yaml(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def parse(path: Path, *overrides: str, monkeypatch=None):
    """Parse a recipe through the entry point's own parser, as `python -m hf_idsel.train --config path` does.

    A GPU recipe (bf16) is parsed with `--use_cpu true` on a machine without a GPU: transformers refuses bf16
    there otherwise. Variables of the recipe's `env:` block are restored by `monkeypatch` afterwards.
    """
    raw = load_yaml(path)
    if monkeypatch is not None:
        for key in raw.get("env", {}):
            monkeypatch.setenv(key, "unset-by-test")
    extra = list(overrides)
    if raw.get("bf16") and not torch.cuda.is_available() and "--use_cpu" not in extra:
        extra += ["--use_cpu", "true"]
    return make_parser().parse_args_and_config(["--config", str(path), *extra])


def test_the_recipe_set_is_complete():
    folders = {p.parent.parent.name for p in RECIPES}
    assert folders == set(PAPER_MODELS) | {LAPTOP_MODEL}
    for folder in folders:
        names = {p.name for p in RECIPES if p.parent.parent.name == folder}
        assert names == {"config_full.yaml", "config_lora.yaml"}, folder
        assert (RECIPES_DIR / folder / "README.md").is_file(), folder
    assert {p.name for p in ACCELERATE_CONFIGS} == {"ddp.yaml", "fsdp.yaml", "zero3.yaml"}
    assert (RECIPES_DIR / "README.md").is_file()


@pytest.mark.parametrize("path", RECIPES, ids=_id)
def test_every_key_of_the_recipe_reaches_the_config(path, monkeypatch):
    raw = load_yaml(path)
    script_args, training_args, model_args = parse(path, monkeypatch=monkeypatch)
    assert isinstance(script_args, ScriptArguments)
    assert isinstance(training_args, IterativeSelectionConfig)
    for key, value in raw.get("env", {}).items():
        assert os.environ[key] == str(value)
    for key, expected in raw.items():
        if key == "env":
            continue
        owners = [obj for obj in (script_args, training_args, model_args) if hasattr(obj, key)]
        assert owners, f"{key} is not an argument of the entry point"
        actual = getattr(owners[0], key)
        if key == "report_to":
            assert actual in ([], ["none"], "none") if expected == "none" else actual == [expected]
        elif key == "lora_target_modules" and isinstance(expected, list) and len(expected) == 1:
            assert actual == expected[0]  # trl.ModelConfig unwraps a one-element list
        else:
            assert actual == expected, f"{key}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("path", RECIPES, ids=_id)
def test_the_values_a_user_relies_on(path, monkeypatch):
    raw = load_yaml(path)
    script_args, training_args, model_args = parse(path, monkeypatch=monkeypatch)
    folder, variant = path.parent.parent.name, path.stem.split("_")[-1]

    assert training_args.budget == raw["budget"]
    assert training_args.rounds == raw["rounds"]
    assert training_args.num_train_epochs == raw["rounds"] * raw.get("epochs_per_round", 1)
    assert training_args.k_value == raw["k"]
    assert training_args.scorer == raw["scorer"]
    assert model_args.use_peft is (variant == "lora")
    assert model_args.model_name_or_path == raw["model_name_or_path"]
    assert not training_args.push_to_hub  # publishing is opt-in
    assert training_args.hub_model_id

    if folder == LAPTOP_MODEL:
        assert model_args.model_name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert script_args.dataset_name == BUILTIN_POOL
        assert training_args.use_cpu and not training_args.bf16
        assert training_args.scorer == "loss"
        assert training_args.budget <= 64 and training_args.rounds == 2
        assert script_args.max_pool_rows is not None
    else:
        # The paper's setting: 10k WizardLM rows, 3 rounds, k=2048, reward-model scorer, batch 64 on 8 GPUs.
        assert model_args.model_name_or_path == PAPER_MODELS[folder]
        assert script_args.dataset_name == "WizardLMTeam/WizardLM_evol_instruct_V2_196k"  # the paper's 196k pool
        assert training_args.budget == 10_000 and training_args.rounds == 3
        assert training_args.k_value == 2048
        assert training_args.scorer == "reward" and training_args.reward_model
        # Algorithm 1 scores all of D'; a quality column makes the draws iterative kMQ, not kM-random.
        assert training_args.scored_rows == "selected" and script_args.quality_model
        assert (REPO / training_args.reward_template).is_file(), "reward_template must exist relative to the repository root"
        assert training_args.bf16 and model_args.dtype == "bfloat16"
        assert training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * 8 == 64
        assert training_args.max_length == 2048
        template = REPO / training_args.chat_template_path
        assert template.is_file(), "chat_template_path must exist relative to the repository root"
        if variant == "lora":
            assert (model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout) == (64, 16, 0.1)


def test_command_line_overrides_the_recipe(monkeypatch):
    path = RECIPES_DIR / LAPTOP_MODEL / "iterative_sft" / "config_lora.yaml"
    script_args, training_args, model_args = parse(
        path, "--budget", "32", "--rounds", "4", "--k", "auto", "--use_peft", "false", "--dataset_name", "pool.jsonl",
        monkeypatch=monkeypatch,
    )
    assert training_args.budget == 32 and training_args.rounds == 4
    assert training_args.num_train_epochs == 4
    assert training_args.k_value == "auto"
    assert model_args.use_peft is False
    assert script_args.dataset_name == "pool.jsonl"
    # Everything else still comes from the recipe.
    assert training_args.learning_rate == load_yaml(path)["learning_rate"]


def test_the_selection_config_refuses_max_steps_in_a_recipe(tmp_path):
    recipe = tmp_path / "bad.yaml"
    raw = load_yaml(RECIPES_DIR / LAPTOP_MODEL / "iterative_sft" / "config_lora.yaml")
    raw.pop("env")
    raw["max_steps"] = 10
    recipe.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="max_steps"):
        make_parser().parse_args_and_config(["--config", str(recipe)])


def test_an_unknown_recipe_key_is_refused(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model_name_or_path: x\nbf16: false\nuse_cpu: true\nbudgett: 10\n")
    with pytest.raises(ValueError, match="budgett"):
        make_parser().parse_args_and_config(["--config", str(recipe)])


EXPECTED_DISTRIBUTED_TYPE = {"ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP", "zero3.yaml": "DEEPSPEED"}


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_configs_load_in_accelerate(path):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    raw = load_yaml(path)
    config = ClusterConfig.from_yaml_file(str(path))  # accelerate's own loader: refuses unknown keys
    assert config.distributed_type.value == EXPECTED_DISTRIBUTED_TYPE[path.name] == raw["distributed_type"]
    assert config.compute_environment.value == "LOCAL_MACHINE"
    assert config.mixed_precision == "bf16"
    assert (config.num_processes, config.num_machines) == (8, 1)
    assert not config.use_cpu
    # `accelerate launch` turns every fsdp_config / deepspeed_config key into its own option: each must exist.
    options = {s for action in launch_command_parser()._actions for s in action.option_strings}
    for section in ("fsdp_config", "deepspeed_config"):
        for key in raw.get(section) or {}:
            assert f"--{key}" in options, f"{path.name}: {section}.{key} is not an accelerate launch option"
    if path.name == "zero3.yaml":
        assert config.deepspeed_config["zero_stage"] == 3
        assert config.deepspeed_config["zero3_save_16bit_model"] is True
    if path.name == "fsdp.yaml":
        assert config.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"


def _commands(text: str) -> list[str]:
    """Shell commands of the fenced blocks of a README, continuation lines joined."""
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.DOTALL)
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [" ".join(line.split()) for line in joined.splitlines() if "hf_idsel.train" in line]


@pytest.mark.parametrize("folder", sorted(PAPER_MODELS) + [LAPTOP_MODEL])
def test_readmes_launch_every_recipe_with_existing_files(folder):
    text = (RECIPES_DIR / folder / "README.md").read_text(encoding="utf-8")
    commands = _commands(text)
    for recipe in ("config_full.yaml", "config_lora.yaml"):
        wanted = f"--config recipes/{folder}/iterative_sft/{recipe}"
        assert any(wanted in c for c in commands), f"{folder}/README.md has no command for {recipe}"
    for command in commands:
        for referenced in re.findall(r"(recipes/\S+\.yaml)", command):
            assert (REPO / referenced).is_file(), referenced
        assert "-m hf_idsel.train" in command
    if folder == LAPTOP_MODEL:
        assert any(c.startswith("python -m hf_idsel.train") for c in commands)
        cpu = [c for c in commands if c.startswith("accelerate launch")]
        assert cpu and all("--multi_gpu --num_processes 2" in c and "--mixed_precision no" in c for c in cpu)
    else:
        assert any("--config_file recipes/accelerate_configs/" in c for c in commands)


def test_the_index_links_every_recipe_folder():
    text = (RECIPES_DIR / "README.md").read_text(encoding="utf-8")
    for folder in sorted(PAPER_MODELS) + [LAPTOP_MODEL, "accelerate_configs"]:
        assert f"{folder}/" in text, folder
