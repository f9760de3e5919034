#!/usr/bin/env python
"""Mutation-test the pure core (sample.py, rounds.py) against its fast unit tests, and print the score.

Not part of the default test run (CI runs `pytest`, which never collects this script). It needs
mutmut 3.x, declared in the `mutation` extra: `.venv/bin/pip install -e '.[mutation]'`.

    .venv/bin/python scripts/mutation_test.py                 # both modules, 1 worker
    .venv/bin/python scripts/mutation_test.py --jobs 2        # on a machine of your own
    .venv/bin/python scripts/mutation_test.py --module sample --show   # one module, print survivors' diffs

The run happens in a scratch copy (`build/mutation/`, ignored by git) of the package and tests/;
pytest runs exactly the test files below. mutmut mutates only the chosen modules; a mutant is killed when
one of those tests fails (or times out) with it applied. The score is killed / total per module;
docs/testing.md records the last scores and the surviving mutants judged equivalent.
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

# Module under test -> its fast unit tests. A module's mutants run against every file listed here
# (mutmut picks, per mutated function, the tests that call it).
MODULES = {
    "sample": "hf_idsel/sample.py",
    "rounds": "hf_idsel/rounds.py",
}
TESTS = ["tests/test_sample.py", "tests/test_rounds.py"]

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", choices=sorted(MODULES), action="append", help="module(s) to mutate (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel mutant runs (default 1: CPUs are shared)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "mutation")
    parser.add_argument("--show", action="store_true", help="print the diff of every surviving mutant")
    parser.add_argument("--json", type=Path, help="also write the scores to this JSON file")
    args = parser.parse_args()
    modules = args.module or list(MODULES)

    try:
        import mutmut  # noqa: F401
    except ImportError:
        print("mutmut is not installed: .venv/bin/pip install -e '.[mutation]'", file=sys.stderr)
        return 2

    workdir = args.workdir.resolve()
    prepare(workdir, modules, TESTS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the tests must import the mutated copy
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
    result = scores(workdir, modules)
    if run.returncode != 0 or not any(r["total"] for r in result.values()):
        spinner = set("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
        print("\n".join(line for line in run.stdout.splitlines() if not spinner & set(line[:2]))[-5000:])
        print(f"mutmut run failed (exit {run.returncode})", file=sys.stderr)
        return 1

    print(f"mutation run: {elapsed:.0f} s, {args.jobs} job(s), tests: {' '.join(TESTS)}")
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
    if args.json:
        args.json.write_text(json.dumps({"seconds": round(elapsed), "modules": result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
