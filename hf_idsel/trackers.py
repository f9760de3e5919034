"""Trackers: each round's per-cluster table and the round plot, beside the scalar `selection/*` metrics.

transformers' own `WandbCallback` and `TrackioCallback` open the run and log the scalars; this callback
adds what only trackers that take tables and images can show. `IterativeSelectionTrainer` adds it
when `report_to` names `wandb` or `trackio`.
"""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

TABLE_COLUMNS = ["cluster", "size", "weight", "score", "chosen", "terms"]


def cluster_table_rows(record: dict, cluster_sizes) -> list[list]:
    """One row per cluster of a round record: pool rows, weight after the round, mean score (NaN: none scored), rows chosen, terms."""
    terms = record.get("cluster_terms") or [""] * len(record["weights"])
    return [
        [j, int(cluster_sizes[j]), float(record["weights"][j]), float("nan") if score is None else float(score),
         int(record["selected_per_cluster"][j]), terms[j]]
        for j, score in enumerate(record["cluster_scores"])
    ]


class SelectionTablesCallback(TrainerCallback):
    """Logs each finished round's cluster table (`selection/clusters`) and the round plot (`selection/plot`)
    to the wandb and trackio runs that transformers' callbacks hold, at the step the round closed."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "selection/round" not in logs or not state.is_world_process_zero:
            return control
        from .report import plot_selection

        trainer = self.trainer
        record = trainer.selection.rounds[-1]
        rows = cluster_table_rows(record, np.bincount(trainer.labels, minlength=trainer.k))
        with tempfile.TemporaryDirectory() as tmp:
            plot = plot_selection(trainer.selection_manifest("default"), os.path.join(tmp, "selection.png"), trainer.selection.rounds)
            step = {"train/global_step": state.global_step}  # the step axis the integration callbacks log against
            if "wandb" in args.report_to:
                import wandb

                if wandb.run is not None:
                    wandb.log({"selection/clusters": wandb.Table(columns=TABLE_COLUMNS, data=rows),
                               "selection/plot": wandb.Image(plot), **step})
            if "trackio" in args.report_to:
                import trackio

                trackio.log({"selection/clusters": trackio.Table(columns=TABLE_COLUMNS, data=rows),
                             "selection/plot": trackio.Image(plot), **step})
        return control
