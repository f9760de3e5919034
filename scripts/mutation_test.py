#!/usr/bin/env python
"""Mutation-test the pure core (sample.py, rounds.py, manifest.py) against its fast unit tests, and print the score.

Not part of the default test run (CI runs `pytest`, which never collects this script). It needs
mutmut 3.x, declared in the `mutation` extra: `.venv/bin/pip install -e '.[mutation]'`.

    .venv/bin/python scripts/mutation_test.py                 # every module, 1 worker
    .venv/bin/python scripts/mutation_test.py --jobs 2        # on a machine of your own
    .venv/bin/python scripts/mutation_test.py --module sample --show   # one module, print survivors' diffs

The run happens in a scratch copy (`build/mutation/<modules>/`, ignored by git) of the package and tests/;
pytest runs exactly the test files listed for the module in TESTS below. Modules with the same test files
share one mutmut run (sample and rounds); the others get a run of their own, one after the other. mutmut
mutates only the chosen modules; a mutant is killed when one of those tests fails (or times out) with it
applied. The score is killed / total per module; docs/testing.md records the last scores and the surviving
mutants judged equivalent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Module under test -> its file, and its fast unit tests. A module's mutants run against the files listed for
# it in TESTS (mutmut picks, per mutated function, the tests that call it).
MODULES = {
    "sample": "hf_idsel/sample.py",
    "rounds": "hf_idsel/rounds.py",
    "manifest": "hf_idsel/manifest.py",
}
TESTS = {
    "sample": ["tests/test_sample.py", "tests/test_rounds.py"],
    "rounds": ["tests/test_sample.py", "tests/test_rounds.py"],
    "manifest": ["tests/test_manifest.py"],
}

# Exit codes as mutmut 3 records them (mutmut.stats.status_by_exit_code); a timeout counts as killed.
KILLED = {1: "killed", 3: "killed", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout"}
SURVIVED = {0: "survived"}

PYPROJECT = """\
[tool.mutmut]
source_paths = ["hf_idsel"]
only_mutate = {only_mutate}
pytest_add_cli_args_test_selection = {tests}
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]
use_git_change_detection = false

[tool.pytest.ini_options]
testpaths = ["tests"]
filterwarnings = ["ignore::DeprecationWarning"]
markers = ["slow: real-model tests"]
"""


def prepare(workdir: Path, modules: list[str], tests: list[str]) -> None:
    """A fresh scratch copy with only what the run needs."""
    if workdir.exists():
        shutil.rmtree(workdir)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "hf_idsel", workdir / "hf_idsel", ignore=skip)
    # The whole tests/ folder (conftest.py imports its helpers); pytest runs only `tests`.
    shutil.copytree(ROOT / "tests", workdir / "tests", ignore=skip)
    only = [MODULES[m] for m in modules]
    (workdir / "pyproject.toml").write_text(PYPROJECT.format(only_mutate=json.dumps(only), tests=json.dumps(tests)))


def scores(workdir: Path, modules: list[str]) -> dict:
    """Per module: killed, survived, other (no tests, suspicious, not checked...) and the survivors' names."""
    result = {}
    for module in modules:
        meta = workdir / "mutants" / (MODULES[module] + ".meta")
        codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
        killed = sorted(k for k, c in codes.items() if c in KILLED)
        survived = sorted(k for k, c in codes.items() if c in SURVIVED)
        other = {k: c for k, c in codes.items() if c not in KILLED and c not in SURVIVED}
        result[module] = {"total": len(codes), "killed": len(killed), "survived": survived, "other": other}
    return result


def groups(modules: list[str]) -> list[tuple[list[str], list[str]]]:
    """The chosen modules grouped by their test files, in MODULES order: one mutmut run per group."""
    grouped: dict[tuple[str, ...], list[str]] = {}
    for module in MODULES:
        if module in modules:
            grouped.setdefault(tuple(TESTS[module]), []).append(module)
    return [(group, list(tests)) for tests, group in grouped.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", choices=sorted(MODULES), action="append", help="module(s) to mutate (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel mutant runs (default 1: CPUs are shared)")
    parser.add_argument(
        "--workdir", type=Path, default=ROOT / "build" / "mutation",
        help="scratch folder; each group of modules runs in a subfolder named after them (e.g. sample-rounds)",
    )
    parser.add_argument("--show", action="store_true", help="print the diff of every surviving mutant")
    parser.add_argument("--json", type=Path, help="also write the scores to this JSON file")
    args = parser.parse_args()
    modules = args.module or list(MODULES)

    try:
        import mutmut  # noqa: F401
    except ImportError:
        print("mutmut is not installed: .venv/bin/pip install -e '.[mutation]'", file=sys.stderr)
        return 2

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the tests must import the mutated copy
    # mutmut forks every mutant's run from a process that already ran the tests once. A child forked after faiss
    # (the manifest tests cluster) used its OpenMP threads spins forever, and every mutant times out. One thread
    # avoids that.
    env["OMP_NUM_THREADS"] = "1"
    report = {"seconds": 0, "modules": {}}
    for group, tests in groups(modules):
        workdir = args.workdir.resolve() / "-".join(group)
        prepare(workdir, group, tests)
        start = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.jobs)],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        elapsed = time.monotonic() - start
        report["seconds"] += round(elapsed)
        result = scores(workdir, group)
        if run.returncode != 0 or not any(r["total"] for r in result.values()):
            spinner = set("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
            print("\n".join(line for line in run.stdout.splitlines() if not spinner & set(line[:2]))[-5000:])
            print(f"mutmut run failed in {workdir} (exit {run.returncode})", file=sys.stderr)
            return 1

        print(f"mutation run of {', '.join(group)}: {elapsed:.0f} s, {args.jobs} job(s), in {workdir}, tests: {' '.join(tests)}")
        for module, r in result.items():
            pct = 100.0 * r["killed"] / r["total"] if r["total"] else 0.0
            print(f"{MODULES[module]}: {r['killed']} / {r['total']} killed ({pct:.1f}%), {len(r['survived'])} survived")
            for name in r["survived"]:
                print(f"    survived: {name}")
            for name, code in sorted(r["other"].items()):
                print(f"    not killed ({code}): {name}")
            if args.show:
                for name in r["survived"]:
                    diff = subprocess.run(
                        [sys.executable, "-m", "mutmut", "show", name], cwd=workdir, env=env, capture_output=True, text=True
                    )
                    print(diff.stdout)
        report["modules"].update(result)
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
