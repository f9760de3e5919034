"""Each round's per-cluster table and plot reach the trackers that take them, read back from what wandb
(offline mode) and trackio (local SQLite) wrote, beside the scalar `selection/*` metrics."""

import glob
import json
import os
import uuid

import numpy as np
import pytest

from helpers import make_trainer, single_thread
from hf_idsel.trackers import TABLE_COLUMNS, cluster_table_rows


def test_the_cluster_table_has_a_row_per_cluster():
    record = {"weights": [0.5, 0.3, 0.2], "cluster_scores": [1.5, None, -0.5], "selected_per_cluster": [4, 0, 2],
              "cluster_terms": ["math, sum", "chat", "code"]}
    assert cluster_table_rows(record, np.array([10, 7, 3]))[:1] == [[0, 10, 0.5, 1.5, 4, "math, sum"]]
    middle = cluster_table_rows(record, np.array([10, 7, 3]))[1]
    assert middle[:3] == [1, 7, 0.3] and np.isnan(middle[3]) and middle[4:] == [0, "chat"]
    assert len(TABLE_COLUMNS) == len(middle)


def test_wandb_and_trackio_get_each_rounds_table_and_plot(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("trackio")
    project = f"hf-idsel-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", project)
    monkeypatch.setenv("WANDB_SILENT", "true")
    with single_thread():
        trainer = make_trainer(tmp_path, budget=16, rounds=2, report_to=["wandb", "trackio"], project=project, run_name="run")
        trainer.train()
    rounds = trainer.selection.rounds
    sizes = np.bincount(trainer.labels, minlength=trainer.k)

    # wandb, offline: one table and one image file per round, the table holding the round's clusters.
    [run_dir] = glob.glob(os.path.join(tmp_path, "wandb", "offline-run-*"))
    tables = sorted(glob.glob(os.path.join(run_dir, "files", "media", "table", "selection", "clusters_*.table.json")))
    images = glob.glob(os.path.join(run_dir, "files", "media", "images", "selection", "plot_*.png"))
    assert len(tables) == len(images) == 2
    by_step = sorted(tables, key=lambda p: int(os.path.basename(p).split("_")[1]))
    for path, record in zip(by_step, rounds):
        table = json.load(open(path))
        assert table["columns"] == TABLE_COLUMNS
        expected = cluster_table_rows(record, sizes)
        assert [row[:3] + row[4:] for row in table["data"]] == [row[:3] + row[4:] for row in expected]

    # trackio, local: the same rows, logged at the step each round closed, beside the scalars.
    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs(project, "run")
    logged = [entry for entry in logs if "selection/clusters" in entry]
    assert [entry["train/global_step"] for entry in logged] == [r["global_step"] for r in rounds]
    assert all("selection/plot" in entry for entry in logged)
    assert any("train/selection/weight_entropy" in entry for entry in logs)
