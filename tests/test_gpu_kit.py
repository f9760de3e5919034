"""The prepared GPU sequence (scripts/gpu_kit.py, scripts/gpu_sequence.sh, bench/GPU_RUN.md), rehearsed on the CPU.

The kit's parts are checked against the device tool's limit, pieces are reassembled and verified, and a damaged
piece, another kit's state or a missed warm window stop a step with a message that says what to do. The rehearsal
builds a tiny kit (the rehearsal's wheels repacked from this environment's installed kit packages, bench/gpu.py's
float16 MiniLM, a tiny pool and a random 2-layer Llama) and runs every step of the sequence with `bash
scripts/gpu_sequence.sh`, in processes that import like the GPU image: a package installed here that is neither in
the image's list nor in the kit cannot be imported (unless an image package imports it: this machine's versions of
image packages have dependencies of their own), and the kit's packages come from the step's pip install only.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

import gpu_kit  # noqa: E402

# Installed as sitecustomize in the rehearsal's processes: imports as on the GPU image (see the module docstring).
IMAGE_ONLY = '''
import importlib.abc, importlib.machinery, importlib.metadata, os, re, sys

_image = set(os.environ["GPUKIT_IMAGE_PACKAGES"].split(","))
_kit = set(os.environ["GPUKIT_KIT_PACKAGES"].split(","))
_allowed = [p for p in os.environ["GPUKIT_ALLOWED_PATHS"].split(os.pathsep) if p]


def _canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


class ImageOnly(importlib.abc.MetaPathFinder):
    def __init__(self):
        self.dists = importlib.metadata.packages_distributions()

    def kind(self, top):
        dists = {_canonical(d) for d in self.dists.get(top, ())}
        if not dists:
            return "ours"  # the repository's modules, __main__
        return "image" if dists & _image else "kit" if dists & _kit else "other"

    def imported_by_image(self):
        # The nearest importer that is ours, the kit's or the image's decides ("other" packages were brought in).
        frame = sys._getframe(2)
        while frame is not None:
            name = frame.f_globals.get("__name__", "")
            if not name.startswith(("importlib", "_frozen_importlib")) and name != __name__:
                kind = self.kind(name.split(".")[0])
                if kind != "other":
                    return kind == "image"
            frame = frame.f_back
        return False

    def find_spec(self, name, path=None, target=None):
        if path is not None or name in sys.stdlib_module_names or name in sys.builtin_module_names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, _allowed)  # the kit's site, the repository
        if spec is not None or self.kind(name) in ("ours", "image") or self.imported_by_image():
            return spec
        raise ModuleNotFoundError(f"No module named {name!r} (hidden: not in the GPU image, not in the kit)", name=name)


sys.meta_path.insert(0, ImageOnly())
'''


# --------------------------------------------------------------------------------------------
# Parts, pieces, staging
# --------------------------------------------------------------------------------------------


def _files(root, sizes):
    rng = __import__("random").Random(0)
    names = []
    for i, size in enumerate(sizes):
        rel = f"d{i % 2}/file{i}.bin"
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(rng.randbytes(size))
        names.append(rel)
    return names


@pytest.fixture
def small_kit(tmp_path):
    src, out = tmp_path / "src", tmp_path / "kit"
    names = _files(str(src), [300_000, 40_000, 700_000, 0, 90_000])
    part_bytes = gpu_kit.MANIFEST_RESERVE + 400_000
    manifest = gpu_kit.pack(str(src), names, str(out), part_bytes, {"size": "test"})
    return src, out, names, part_bytes, manifest


def test_pack_keeps_every_part_under_its_limit_and_splits_files_across_parts(small_kit):
    src, out, names, part_bytes, manifest = small_kit
    assert manifest["parts"] == 3  # 1.13 MB of files, 400 kB a part besides its manifest
    for p in range(1, manifest["parts"] + 1):
        assert gpu_kit.folder_bytes(str(out / f"part{p}")) <= part_bytes
        with open(out / f"part{p}" / gpu_kit.MANIFEST) as f:
            assert json.load(f)["kit_id"] == manifest["kit_id"]  # every part carries the whole manifest
    big = next(e for e in manifest["files"] if e["path"] == names[2])
    assert len({p["part"] for p in big["pieces"]}) >= 2 and sum(p["bytes"] for p in big["pieces"]) == 700_000


def test_staging_every_part_restores_every_file(small_kit, tmp_path):
    src, out, names, _, manifest = small_kit
    state = str(tmp_path / "state")
    for p in range(1, manifest["parts"] + 1):
        status = gpu_kit.stage(p, str(out), state)
    assert status["missing_parts"] == [] and sorted(status["complete"]) == sorted(names)
    for rel in names:
        with open(src / rel, "rb") as a, open(os.path.join(state, "files", rel), "rb") as b:
            assert a.read() == b.read()


def test_a_damaged_piece_stops_the_step(small_kit, tmp_path):
    _, out, _, _, manifest = small_kit
    damaged = manifest["files"][2]["pieces"][-1]
    piece = out / f"part{damaged['part']}" / damaged["name"]
    data = bytearray(piece.read_bytes())
    data[len(data) // 2] ^= 1
    piece.write_bytes(bytes(data))
    for p in range(1, damaged["part"]):
        gpu_kit.stage(p, str(out), str(tmp_path / "state"))
    with pytest.raises(gpu_kit.KitError, match=f"piece {damaged['name']} .* damaged"):
        gpu_kit.stage(damaged["part"], str(out), str(tmp_path / "state"))


def test_parts_of_another_kit_are_refused(small_kit, tmp_path):
    src, out, names, part_bytes, _ = small_kit
    state = str(tmp_path / "state")
    gpu_kit.stage(1, str(out), state)
    with open(src / names[0], "ab") as f:
        f.write(b"changed")
    other = tmp_path / "other"
    gpu_kit.pack(str(src), names, str(other), part_bytes, {"size": "test"})
    with pytest.raises(gpu_kit.KitError, match="another kit"):
        gpu_kit.stage(2, str(other), state)


def test_a_later_step_on_a_fresh_machine_says_the_warm_window_was_missed(small_kit, tmp_path):
    _, out, _, _, manifest = small_kit
    rc = gpu_kit.step(3, out=str(tmp_path / "out"), assets=str(out), state=str(tmp_path / "fresh"))
    with open(tmp_path / "out" / "step3.json") as f:
        result = json.load(f)
    assert rc == 4 and "warm window" in result["error"] and "[1, 2]" in result["error"]


# --------------------------------------------------------------------------------------------
# The GPU fidelity run's stopping rule and analysis (bench/gpu_fidelity.py; docs/fidelity.md pre-registration)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fidelity():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import gpu_fidelity

    return gpu_fidelity


def test_a_seed_starts_only_with_90_s_and_the_slowest_seed_s_time_left(fidelity):
    cfg = fidelity.FULL
    assert fidelity.should_start_seed(400, [], cfg) == (True, None)
    assert not fidelity.should_start_seed(89, [], cfg)[0]  # under 90 s: no seed, even the first
    assert fidelity.should_start_seed(150, [70, 80], cfg) == (True, None)
    start, why = fidelity.should_start_seed(150, [70, 160], cfg)
    assert not start and "160" in why


def test_the_minimal_detectable_effect_of_a_paired_t_test(fidelity):
    # (t(0.975, 5) + t(0.80, 5)) / sqrt(6) = (2.5706 + 0.9195) / 2.4495
    assert fidelity.minimal_detectable_effect(1.0, 6) == pytest.approx(1.4248, abs=1e-4)
    assert fidelity.minimal_detectable_effect(0.02, 4) == pytest.approx(0.02 * (3.1824 + 0.9785) / 2, abs=1e-5)


def _runs(fidelity, oracle_gain, noise, seeds=6):
    import numpy as np

    rng = np.random.default_rng(0)
    runs = []
    for seed in range(seeds):
        base = 1.5 + rng.normal(0, 0.05)
        for arm in fidelity.ARMS:
            loss = base + rng.normal(0, noise) - (oracle_gain if arm == "oracle-clean" else 0.0)
            runs.append({"arm": arm, "seed": seed, "loss_mean": loss, "mmlu_acc": 0.3 + rng.normal(0, 0.01),
                         "loss": {d: loss for d in ("gsm8k", "humaneval", "chitchat", "mmlu")},
                         "junk_share": 0.15, "junk_code": 0.07, "junk_wrong-letter": 0.08, "coverage": 0.5})
    return runs


def test_the_analysis_stops_when_the_oracle_s_gain_is_inside_the_mde(fidelity):
    analysis = fidelity.analyze(_runs(fidelity, oracle_gain=0.001, noise=0.02))
    assert analysis["complete_seeds"] == list(range(6))
    assert not analysis["gate"]["loss_mean"]["passed"] and not analysis["gate"]["mmlu_acc"]["passed"]
    assert analysis["verdict"].startswith("No quality claim can come from this size") and analysis["claims"] == []


def test_past_the_gate_an_interval_that_excludes_zero_is_a_finding(fidelity):
    analysis = fidelity.analyze(_runs(fidelity, oracle_gain=0.2, noise=0.01))
    gate = analysis["gate"]["loss_mean"]
    assert gate["passed"] and gate["oracle_gain_over_random"] > gate["mde"]
    assert any(c.startswith("oracle-clean - random: loss_mean") and "(better" in c for c in analysis["claims"])
    assert not any(c.startswith("kmq - random: loss_mean") for c in analysis["claims"])  # no effect planted


def test_incomplete_seeds_are_left_out_of_the_analysis(fidelity):
    runs = _runs(fidelity, oracle_gain=0.2, noise=0.01, seeds=3)
    runs = [r for r in runs if not (r["seed"] == 2 and r["arm"] == "oracle-clean")]  # seed 2 was cut
    analysis = fidelity.analyze(runs)
    assert analysis["complete_seeds"] == [0, 1]
    assert analysis["comparisons"]["kmq - random"]["loss_mean"]["n"] == 2
    assert fidelity.analyze(runs[:5])["verdict"].startswith("1 complete paired seed")


# --------------------------------------------------------------------------------------------
# The rehearsal: every step of the sequence at a tiny size, importing as on the GPU image
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_sequence")
    kit, state, out, hide = (str(root / n) for n in ("kit", "state", "out", "hide"))
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    built = subprocess.run([sys.executable, "scripts/gpu_kit.py", "build", "--out", kit, "--size", "tiny", "--wheels",
                            "installed", "--part-mib", "40"], capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    os.makedirs(hide)
    with open(os.path.join(hide, "sitecustomize.py"), "w") as f:
        f.write(IMAGE_ONLY)
    env = dict(env, PYTHONPATH=hide, GPUKIT_PYTHON=sys.executable, GPUKIT_STATE=state, OUT=out,
               GPUKIT_IMAGE_PACKAGES=",".join(sorted(gpu_kit.IMAGE_PACKAGES)), GPUKIT_KIT_PACKAGES=",".join(gpu_kit.KIT_PACKAGES),
               GPUKIT_ALLOWED_PATHS=os.pathsep.join([os.path.join(state, "site"), REPO]))
    manifest = gpu_kit.read_manifest(kit)
    steps = []
    for n in range(1, manifest["parts"] + 1):
        done = subprocess.run(["bash", "scripts/gpu_sequence.sh", str(n), "--assets", kit, "--seconds", "400"],
                              capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
        steps.append(done)
    yield {"kit": kit, "out": out, "manifest": manifest, "steps": steps, "built": json.loads(built.stdout.splitlines()[-1])}
    shutil.rmtree(root, ignore_errors=True)


def _json(rehearsal, name):
    with open(os.path.join(rehearsal["out"], name)) as f:
        return json.load(f)


def test_the_kit_is_in_parts_under_the_limit_with_wheels_of_what_the_image_lacks(rehearsal):
    manifest = rehearsal["manifest"]
    assert manifest["parts"] >= 2
    assert all(size <= 40 for size in rehearsal["built"]["part_mib"])
    wheels = {e["path"].split("/")[1].split("-")[0].replace("_", "-") for e in manifest["files"] if e["path"].startswith("wheels/")}
    assert wheels == set(gpu_kit.KIT_PACKAGES) and not wheels & gpu_kit.IMAGE_PACKAGES
    assert {e["path"] for e in manifest["files"]} >= {"gpu/encoder/model.safetensors", "gpu/texts.jsonl.gz",
                                                      "fidelity/pool.jsonl.gz", "fidelity/embeddings.npy"}


def test_step_one_installs_the_wheels_and_reports_the_machine(rehearsal):
    first = rehearsal["steps"][0]
    assert first.returncode == 0, first.stdout[-4000:]
    report = _json(rehearsal, "step1.json")["report"]
    assert all(v.startswith("ok") for v in report["imports"].values()), report["imports"]
    for module in ("datasets", "trl", "faiss", "gguf", "dill", "multiprocess"):
        assert report["imports_from"][module] == "kit"  # from the step's install, not from this environment
    assert report["imports_from"]["hf_idsel"] == os.path.join(REPO, "hf_idsel", "__init__.py")
    assert report["unmet"] == [] and report["cuda"] is False
    assert os.path.exists(os.path.join(rehearsal["out"], "step1.log"))


def test_bench_gpu_runs_hf_idsel_from_the_kit(rehearsal):
    assert all(done.returncode == 0 for done in rehearsal["steps"]), rehearsal["steps"][-1].stdout[-4000:]
    gpu = _json(rehearsal, "gpu.json")
    assert gpu["finished"] and gpu["machine"]["faiss"] and gpu["machine"]["datasets"]
    assert gpu["kit"]["kit_id"] == rehearsal["manifest"]["kit_id"]
    assert set(gpu["kmeans"]) == {"torch", "faiss"} and gpu["encoder"]["rows"] == 16
    assert gpu["select"]["implementation"] == "hf_idsel.diverse_select" and gpu["select"]["selected"] == 4


def test_the_fidelity_run_returns_complete_paired_seeds_and_their_analysis(rehearsal):
    results = _json(rehearsal, "gpu_fidelity.json")
    runs = results["runs"]
    arms = ("random", "kmq", "iter-default", "iter-placebo", "oracle-clean")
    assert results["preset"] == "tiny" and results["analysis"]["complete_seeds"] == [0, 1]
    assert results["kit"]["manifest"]["kit_id"] == rehearsal["manifest"]["kit_id"]
    assert sorted((r["arm"], r["seed"]) for r in runs) == sorted((a, s) for a in arms for s in (0, 1))
    assert len({r["steps"] for r in runs}) == 1  # every arm trained the same steps
    budget = results["config"]["budget"]
    for r in runs:
        assert len(r["selected"]) == budget and len(set(r["selected"])) == budget
        assert r["loss"].keys() == {"gsm8k", "humaneval", "chitchat", "mmlu"} and 0 <= r["mmlu_acc"] <= 1
    assert all(r["junk_share"] == 0 for r in runs if r["arm"] == "oracle-clean")
    by = {(r["arm"], r["seed"]): r for r in runs}
    for seed in (0, 1):
        default, placebo = by[("iter-default", seed)]["rounds"], by[("iter-placebo", seed)]["rounds"]
        assert len(default) == len(placebo) == 3
        assert sorted(default[0]["selected"]) == sorted(placebo[0]["selected"])  # paired: round 1 is shared
        assert any(s is not None for s in placebo[0]["cluster_scores"])  # the placebo scored round 1
    analysis = results["analysis"]
    assert set(analysis["gate"]) == {"loss_mean", "mmlu_acc"} and "iter-default - iter-placebo" in analysis["comparisons"]
    entry = analysis["comparisons"]["oracle-clean - random"]["loss_mean"]
    diffs = [by[("oracle-clean", s)]["loss_mean"] - by[("random", s)]["loss_mean"] for s in (0, 1)]
    assert entry["per_seed"] == pytest.approx(diffs) and entry["low"] <= entry["mean"] <= entry["high"]
    assert analysis["verdict"]
