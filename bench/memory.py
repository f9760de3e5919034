"""Peak memory of the laptop recipe, stage by stage: where the RSS of `hf_idsel.train` goes.

    .venv/bin/python bench/memory.py [--config recipes/smollm2-135m/iterative_sft/config_lora.yaml]
        [--budget 16] [--max_pool_rows 256] [--out docs/memory_results.json --label NAME] [-- extra recipe overrides]

Runs the recipe in a fresh subprocess (offline, `OMP_NUM_THREADS=1` unless set), at reduced steps when
`--budget` is lowered (the peak of a training step does not depend on how many steps run), and reports the
peak resident set size (RSS) of each stage:

| stage | what runs |
|---|---|
| `startup` | imports |
| `pool load` | `hf_idsel.train.load_pool`: the pool read, sampled and put in a trainable layout |
| `model load` | `hf_idsel.train.load_model` (the packaged GGUF dequantised, or `from_pretrained`) |
| `trainer set-up` | `IterativeSelectionTrainer.__init__` outside the stages below (TRL's tokenization, LoRA) |
| `scorer load` | building the round scorer and its `prepare` (a reference model, a frozen base copy) |
| `pool embedding` | the encoder loaded and run over the pool (or the cached vectors read) |
| `clustering` | k-means, decontamination and the cluster descriptions |
| `training: forward` | the model's forward pass in `compute_loss`, outside the LM head: the activations kept for backward |
| `training: LM head` | TRL's fused LM head (`ChunkedLogProbFunction`), forward and backward: vocabulary-wide tiles |
| `training: backward` | `accelerator.backward` outside the LM head |
| `training steps` | the rest of `Trainer.training_step` (the optimizer step runs right after it, in `other`) |
| `round scoring` | `finish_round`: scores, weights, the round file, the next draw |
| `other` | everything else: argument checks, optimizer steps, the schedule, saving, the model card |

A stage's peak is the highest RSS while it runs, outside the stages nested in it. On Linux it is exact: the kernel's
high-water mark (`VmHWM`) is read and reset (`/proc/self/clear_refs`) at every stage boundary, once a 64 MiB block
mapped and freed at start has shown that the kernel's mark keeps freed pages; elsewhere a thread samples the RSS every 5 ms, and the whole run's peak is also read from
`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` in the parent (which a short peak cannot slip past; on Linux the
reset high-water mark resets it too, so there it is not a whole-run figure). `rss_after` is what a stage leaves
resident when it returns.

Prints a markdown table; `--out` keeps every number under `--label` in a JSON file, with the git commit, the
machine, its load average, the learning rate of every step and the round lines the run logged.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import mmap
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_CONFIG = os.path.join(REPO, "recipes", "smollm2-135m", "iterative_sft", "config_lora.yaml")
STAGES = (
    "startup", "pool load", "model load", "trainer set-up", "scorer load", "pool embedding", "clustering",
    "training: forward", "training: LM head", "training: backward", "training steps", "round scoring", "other",
)
GIB = 2**30
_CALIBRATION_BYTES = 64 * 2**20  # mapped, touched and freed once to check the kernel keeps a high-water mark


# --------------------------------------------------------------------------------------------
# Child: the recipe with stage probes
# --------------------------------------------------------------------------------------------


class _Probe:
    """Peak and resident RSS per stage, with stages nested on a stack (the enclosing stage resumes after)."""

    def __init__(self):
        self.exact = self._can_reset()
        self.peak = {name: 0 for name in STAGES}
        self.after = {name: 0 for name in STAGES}
        self.seconds = {name: 0.0 for name in STAGES}
        self.calls = {name: 0 for name in STAGES}
        self.stack = ["startup"]
        self.started = time.perf_counter()
        self._sampled = 0
        self._stopped = threading.Event()
        if not self.exact:
            threading.Thread(target=self._sample, daemon=True).start()

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(field)

    def _can_reset(self) -> bool:
        """Whether the kernel's high-water mark can be reset and then sees a block mapped and freed since.

        Some kernels accept the reset but keep no mark of pages unmapped since (the mark is updated lazily);
        those get the sampling thread instead of a peak that misses every freed allocation.
        """
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the high-water mark to the current RSS
            before = self._status("VmRSS")
            block = mmap.mmap(-1, _CALIBRATION_BYTES)
            for offset in range(0, _CALIBRATION_BYTES, mmap.PAGESIZE):
                block[offset] = 1  # touched, so resident
            block.close()
            seen = self._status("VmHWM") - before
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except (OSError, KeyError):
            return False
        return seen >= _CALIBRATION_BYTES * 3 // 4

    def rss(self) -> int:
        if self.exact:
            return self._status("VmRSS")
        import psutil

        return psutil.Process().memory_info().rss

    def _sample(self) -> None:
        while not self._stopped.wait(0.005):
            self._sampled = max(self._sampled, self.rss())

    def _take_peak(self) -> int:
        """The peak since the last boundary, and a new window starting now."""
        if self.exact:
            peak = self._status("VmHWM")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return peak
        peak, self._sampled = max(self._sampled, self.rss()), self.rss()
        return peak

    def _close_window(self) -> None:
        now = time.perf_counter()
        peak = self._take_peak()
        # A window belongs to the innermost stage running: an enclosing stage's peak leaves its nested stages out.
        self.peak[self.stack[-1]] = max(self.peak[self.stack[-1]], peak)
        self.seconds[self.stack[-1]] += now - self.started
        self.started = now

    def enter(self, name: str) -> None:
        self._close_window()
        self.stack.append(name)
        self.calls[name] += 1

    def leave(self, name: str) -> None:
        self._close_window()
        self.after[name] = self.rss()
        self.stack.pop()

    def wrap(self, owner, attribute: str, name: str, *, static: bool = False) -> None:
        function = getattr(owner, attribute)

        @functools.wraps(function)
        def probed(*args, **kwargs):
            self.enter(name)
            try:
                return function(*args, **kwargs)
            finally:
                self.leave(name)

        setattr(owner, attribute, staticmethod(probed) if static else probed)

    def result(self) -> dict:
        self._stopped.set()  # the sampling thread, where there is one, ends with the measurement
        total = max(self.peak.values())
        return {
            "exact": self.exact,
            "peak_rss": total,
            "stages": {
                name: {"peak_rss": self.peak[name], "rss_after": self.after[name], "seconds": round(self.seconds[name], 2),
                       "calls": self.calls[name]}
                for name in STAGES
            },
        }


def _install_probes(probe: _Probe) -> None:
    from accelerate import Accelerator
    from transformers import Trainer
    from trl.kernels import ChunkedLogProbFunction

    import hf_idsel.train as train
    import hf_idsel.trainer as trainer

    cls = trainer.IterativeSelectionTrainer
    probe.wrap(train, "load_pool", "pool load")
    probe.wrap(train, "load_model", "model load")
    probe.wrap(cls, "__init__", "trainer set-up")
    probe.wrap(trainer, "pool_embeddings", "pool embedding")
    probe.wrap(trainer, "decontaminate_and_cluster", "clustering")
    probe.wrap(Trainer, "training_step", "training steps")
    probe.wrap(cls, "compute_loss", "training: forward")
    probe.wrap(Accelerator, "backward", "training: backward")
    for name in ("forward", "backward"):  # static methods of an autograd Function
        probe.wrap(ChunkedLogProbFunction, name, "training: LM head", static=True)
    probe.wrap(cls, "finish_round", "round scoring")
    as_scorer = trainer.as_scorer

    def probed_as_scorer(*args, **kwargs):
        probe.enter("scorer load")
        try:
            scorer = as_scorer(*args, **kwargs)
        finally:
            probe.leave("scorer load")
        probe.wrap(scorer, "prepare", "scorer load")  # the instance's prepare: a frozen base copy is made there
        return scorer

    trainer.as_scorer = probed_as_scorer


def _child(result_path: str, argv: list[str]) -> None:
    probe = _Probe()
    started = time.perf_counter()
    _install_probes(probe)
    from hf_idsel.train import run

    probe.enter("other")
    trainer = run(argv)
    probe.leave("other")
    result = probe.result()
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["global_step"] = int(trainer.state.global_step)
    result["train_runtime"] = trainer.state.log_history[-1].get("train_runtime")
    result["learning_rates"] = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f)


# --------------------------------------------------------------------------------------------
# Parent: one fresh process, its results, the machine
# --------------------------------------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _machine() -> dict:
    import psutil

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
        "python": platform.python_version(),
    }


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "trl", "peft", "datasets", "sentence-transformers", "gguf"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def measure(config: str = DEFAULT_CONFIG, *, budget: int | None = None, max_pool_rows: int | None = None,
            extra: list[str] | None = None, timeout: float = 3600) -> dict:
    """Run the recipe in a fresh process and return its peak RSS per stage (bytes) with the run's facts."""
    with tempfile.TemporaryDirectory(prefix="hf_idsel-memory-") as folder:
        argv = ["--config", config, "--output_dir", os.path.join(folder, "out"), "--disable_tqdm", "true"]
        if budget is not None:
            argv += ["--budget", str(budget)]
        if max_pool_rows is not None:
            argv += ["--max_pool_rows", str(max_pool_rows)]
        argv += list(extra or [])
        result_path = os.path.join(folder, "result.json")
        env = {
            **os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "HF_HOME": os.environ.get("HF_HOME", os.path.join(folder, "hf_home")),  # no embedding cache from earlier runs
            "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
        }
        env.setdefault("OMP_NUM_THREADS", "1")
        load_before = os.getloadavg()
        started = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", result_path, "--", *argv],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False,
        )
        wall = time.perf_counter() - started
        if completed.returncode != 0:
            raise RuntimeError(f"the recipe failed (status {completed.returncode}):\n{completed.stderr[-4000:]}")
        with open(result_path, encoding="utf-8") as f:
            result = json.load(f)
    # ru_maxrss is in KiB on Linux (bytes on macOS); the child is the only one this process waited for.
    scale = 1 if sys.platform == "darwin" else 1024
    # Recorded without this machine's paths: the recipe relative to the repository, the output in a temporary folder.
    shown = [os.path.relpath(a, REPO) if a == config else "<tmp>/out" if a.startswith(folder) else a for a in argv]
    result.update(
        argv=shown, omp_num_threads=env["OMP_NUM_THREADS"], process_wall_seconds=round(wall, 1),
        ru_maxrss=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale,
        load_average_before=[round(x, 2) for x in load_before],
        load_average_after=[round(x, 2) for x in os.getloadavg()],
        round_lines=[line.split("hf_idsel.trainer: ", 1)[-1] for line in completed.stderr.splitlines()
                     if "hf_idsel.trainer" in line and "round " in line],
    )
    return result


def table(result: dict) -> str:
    lines = ["| stage | peak RSS (GiB) | RSS after (GiB) | seconds | calls |", "|---|---|---|---|---|"]
    for name, stage in result["stages"].items():
        if stage["calls"] or name == "startup":
            lines.append(
                f"| {name} | {stage['peak_rss'] / GIB:.2f} | {stage['rss_after'] / GIB:.2f} | {stage['seconds']:.1f} "
                f"| {stage['calls']} |"
            )
    check = "" if result["exact"] else f" (ru_maxrss {result['ru_maxrss'] / GIB:.2f})"
    lines.append(f"| **whole run** | **{result['peak_rss'] / GIB:.2f}**{check} | | {result['wall_seconds']:.1f} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="The recipe (default: the laptop LoRA recipe).")
    parser.add_argument("--budget", type=int, default=None, help="Rows selected (fewer steps); the recipe's by default.")
    parser.add_argument("--max_pool_rows", type=int, default=None, help="Pool sample; the recipe's by default.")
    parser.add_argument(
        "--out", default=None, help="Results JSON: the run is stored under its label there, beside the runs already in it."
    )
    parser.add_argument("--label", default="run", help="The run's name in `--out` (a run of the same name is replaced).")
    parser.add_argument("extra", nargs="*", help="Further recipe overrides, after `--`.")
    args = parser.parse_args(argv)
    # The code measured is the code when the run starts.
    facts = dict(
        label=args.label, config=os.path.relpath(os.path.abspath(args.config), REPO), commit=_git("rev-parse", "HEAD"),
        worktree_clean=_git("status", "--porcelain", "--untracked-files=no") == "",
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=_machine(), versions=_versions(),
    )
    result = {**facts, **measure(args.config, budget=args.budget, max_pool_rows=args.max_pool_rows, extra=args.extra)}
    print(table(result))
    if args.out:
        store(args.out, args.label, result)
    return result


def store(path: str, label: str, result: dict) -> None:
    """Keep `result` under `label` in the results file `path` (`{"runs": {label: result, ...}}`)."""
    runs = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            runs = json.load(f)["runs"]
    runs[label] = result
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"runs": runs}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[4:] if sys.argv[3:4] == ["--"] else sys.argv[3:])
    else:
        main()
