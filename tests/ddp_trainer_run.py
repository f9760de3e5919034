"""Run by test_trainer.py under `torchrun --nproc_per_node 2`: an iterative run on 2 CPU ranks (gloo).

Each rank writes the selection it holds to OUT/rank_<i>.json so the test can compare them.
"""

import json
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

torch.set_num_threads(1)

from helpers import junk_judge, make_pool, make_tiny_llama  # noqa: E402

from hf_idsel import IterativeSelectionConfig, IterativeSelectionTrainer  # noqa: E402
from hf_idsel.scorers import JudgeScorer  # noqa: E402


def main(out: str, scorer: str = "judge", mode: str = "continue", variant: str = "vectors") -> None:
    """`variant`: "vectors" clusters the pool's `embedding` column; "lora-hidden" trains LoRA adapters and clusters
    the hidden states of the model itself (`embed_with_model`), each rank embedding its share."""
    model, tokenizer = make_tiny_llama()
    hidden = variant == "lora-hidden"
    args = IterativeSelectionConfig(
        output_dir=out, budget=24, rounds=3, k="4", embedding_column=None if hidden else "embedding",
        embed_with_model=hidden, per_device_train_batch_size=2,
        learning_rate=5e-3, max_length=64, report_to="none", bf16=False, use_cpu=True, save_strategy="no",
        scored_rows_per_cluster=4, generation_max_new_tokens=8, seed=0, disable_tqdm=True,
        logging_steps=1, round_mode=mode,
    )
    extra = {}
    if hidden:
        from peft import LoraConfig

        extra["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = IterativeSelectionTrainer(
        model, args=args, train_dataset=make_pool(), processing_class=tokenizer,
        scorer=JudgeScorer(junk_judge) if scorer == "judge" else scorer, **extra,
    )
    trainer.train()
    rank = trainer.accelerator.process_index
    with open(os.path.join(out, f"rank_{rank}.json"), "w") as f:
        json.dump(
            {
                "world": trainer.accelerator.num_processes, "rounds": trainer.selection.rounds,
                "descriptions": trainer.cluster_descriptions, "global_step": trainer.state.global_step,
                "max_steps": trainer.state.max_steps, "last_lr": trainer.lr_scheduler.get_last_lr()[0],
                "labels": [int(x) for x in trainer.labels], "encoder": trainer.encoder_info,
            },
            f,
        )
    # Without this, gloo's worker threads can outlive the interpreter and abort the process at exit.
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(), *sys.argv[2:5])
    # The results are written and the process group is closed; skipping interpreter teardown keeps gloo's
    # C++ worker threads from aborting the rank at exit ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
