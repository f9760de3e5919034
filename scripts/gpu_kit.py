"""The GPU kit: everything the prepared GPU sequence needs, in parts small enough for the device tool, and the
runner of the sequence's steps on the GPU machine (bench/GPU_RUN.md is the checklist).

Here, once, in the checkout the device tool sends (hf_idsel with its [offline] extras installed; PyPI reachable):

    .venv/bin/python scripts/gpu_kit.py build [--out bench/gpu_assets] [--part-mib 58]

writes `bench/gpu_assets/part1 ... partN` (git-ignored), each at most `--part-mib` MiB with a copy of the manifest
(every file's size and sha256, and of each piece of it), and prints the device calls to make. What goes in:

* `wheels/`: cp312 manylinux x86_64 wheels of what the GPU image lacks (`KIT_PACKAGES`, at the versions installed
  here, so the device runs what the tests ran), downloaded with pip; `--wheels installed` repacks the installed
  distributions instead (the CPU rehearsal's wheels: same files, this interpreter).
* `gpu/`: `bench/gpu.py prepare`'s float16 MiniLM and rendered texts.
* `fidelity/`: `bench/gpu_fidelity.py prepare`'s pool (rows, float16 MiniLM vectors, planted junk), held-out sets
  and the packaged SmolLM2 GGUF, which is split across two parts (a piece is never over the part size).

On the GPU machine, one step per device `run` call (`bash scripts/gpu_sequence.sh N` calls `step N`):

    python3 scripts/gpu_kit.py step N --out $OUT [--seconds S]

copies part N into the state folder (default /tmp/gpukit, which a warm machine keeps between calls), checks the
sha256 of every piece and assembles every file whose pieces are all there (checking its sha256), installs the
wheels into <state>/site once they are complete, and then runs what the assembled files allow: step 1 reports
the image (versions, where each package imports from, unmet requirements, nvidia-smi, a bf16 matmul), the first
step with the gpu/ files complete runs `bench/gpu.py run`, and the last step runs `bench/gpu_fidelity.py run`, each
with a time limit inside `--seconds` that leaves time to write the results. What runs on the device uses the
standard library until the wheels are installed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIT_FORMAT = "hf_idsel-gpu-kit/1"
MIB = 2**20
# What one device call carries at most: the working tree (tracked and untracked-not-ignored files) and `carry`.
DEVICE_CARRY_LIMIT = 64 * MIB
DEFAULT_PART_MIB = 58
DEFAULT_OUT = os.path.join(REPO, "bench", "gpu_assets")
DEFAULT_STATE = "/tmp/gpukit"
MANIFEST = "MANIFEST.json"
MANIFEST_RESERVE = 512 * 1024  # room kept in every part for its copy of the manifest
WHEEL_PYTHON = "3.12"
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                   "manylinux1_x86_64")
# What the image lacks that the sequence imports: datasets (and dill, multiprocess under it), trl, faiss, gguf.
KIT_PACKAGES = ("datasets", "dill", "multiprocess", "trl", "faiss-cpu", "gguf")
# The Python packages of the GPU machines' image 'cuda' (/work/.library/device/KINDS.md, as read on 2026-11-17).
IMAGE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers
treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp
""".split())
# Versions the image was seen with (KINDS.md); the report prints what the machine really has.
REPORTED = ("torch", "transformers", "tokenizers", "huggingface-hub", "sentence-transformers", "accelerate", "peft",
            "safetensors", "numpy", "pyarrow", "pandas", "fsspec", "xxhash", "scipy", "scikit-learn", "packaging")
# bench/gpu.py's arguments per kit size: the sizes on the GPU, a few rows in the CPU rehearsal.
GPU_ARGS = {"full": [], "tiny": ["--rows", "40", "--k", "4", "--encoder-rows", "16"]}
GPU_TEXTS = {"full": None, "tiny": 40}
RESERVE_S = 20  # seconds a step keeps after its last child for writing what it has


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 * MIB), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# build (here)
# --------------------------------------------------------------------------------------------


def download_wheels(dest: str, python_version: str = WHEEL_PYTHON) -> list[str]:
    """pip-download the wheels of `KIT_PACKAGES` at the versions installed here, for CPython `python_version` on
    manylinux x86_64, without their dependencies (the image has the rest)."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in KIT_PACKAGES]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               python_version, "--implementation", "cp", "-d", dest]
    for platform in WHEEL_PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command + pins, check=True)
    return sorted(os.listdir(dest))


def repack_installed(name: str, dest: str) -> str:
    """A wheel of the installed distribution `name`, made from its installed files (RECORD rewritten): how the CPU
    rehearsal gets wheels of `KIT_PACKAGES` without a network."""
    dist = importlib.metadata.distribution(name)
    files = [f for f in dist.files or [] if not str(f).startswith("..") and "__pycache__" not in f.parts]
    info = next(str(f.parent) for f in files if f.name == "METADATA" and str(f.parent).endswith(".dist-info"))
    wheel_text = (dist.read_text("WHEEL") or "")
    tag = next(line.split(":", 1)[1].strip() for line in wheel_text.splitlines() if line.startswith("Tag:"))
    path = os.path.join(dest, f"{re.sub(r'[-_.]+', '_', dist.metadata['Name'])}-{dist.version}-{tag}.whl")
    record = []
    skip = {f"{info}/{n}" for n in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as whl:
        for f in files:
            if str(f) in skip:
                continue
            data = dist.locate_file(f).read_bytes()
            whl.writestr(str(f), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{f},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        whl.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def pack(root: str, files: list[str], out: str, part_bytes: int, meta: dict) -> dict:
    """Copy `files` (paths under `root`, in order) into `out/part1..N`, each holding at most `part_bytes` bytes with its
    manifest; a file that does not fit the room left in a part is split into pieces. Returns the manifest."""
    room_per_part = part_bytes - MANIFEST_RESERVE
    if room_per_part <= 0:
        raise ValueError(f"a part of {part_bytes} bytes leaves no room beside its manifest ({MANIFEST_RESERVE} bytes)")
    entries, part, used = [], 1, 0
    for index, rel in enumerate(files):
        src = os.path.join(root, rel)
        size = os.path.getsize(src)
        pieces, offset = [], 0
        with open(src, "rb") as f:
            while offset < size or not pieces:
                if used >= room_per_part:
                    part, used = part + 1, 0
                n = min(room_per_part - used, size - offset)
                name = f"f{index:03d}.{len(pieces)}"
                folder = os.path.join(out, f"part{part}")
                os.makedirs(folder, exist_ok=True)
                digest = hashlib.sha256()
                with open(os.path.join(folder, name), "wb") as piece:
                    left = n
                    while left:
                        block = f.read(min(8 * MIB, left))
                        piece.write(block)
                        digest.update(block)
                        left -= len(block)
                pieces.append({"part": part, "name": name, "offset": offset, "bytes": n, "sha256": digest.hexdigest()})
                offset += n
                used += n
        entries.append({"path": rel, "bytes": size, "sha256": sha256_file(src), "pieces": pieces})
    kit_id = hashlib.sha256(json.dumps([(e["path"], e["sha256"]) for e in entries]).encode()).hexdigest()[:16]
    manifest = {"format": KIT_FORMAT, "kit_id": kit_id, "parts": part, "part_bytes": part_bytes, **meta, "files": entries}
    text = json.dumps(manifest, indent=1)
    if len(text) > MANIFEST_RESERVE:
        raise ValueError(f"the manifest ({len(text)} bytes) is larger than the room kept for it ({MANIFEST_RESERVE})")
    with open(os.path.join(out, MANIFEST), "w", encoding="utf-8") as f:
        f.write(text)
    for p in range(1, part + 1):
        with open(os.path.join(out, f"part{p}", MANIFEST), "w", encoding="utf-8") as f:
            f.write(text)
    return manifest


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(r, n)) for r, _, names in os.walk(folder) for n in names)


def tree_bytes(repo: str = REPO) -> int | None:
    """Bytes of what the device tool sends besides `carry`: tracked and untracked-not-ignored files (None without git)."""
    try:
        listed = subprocess.run(["git", "-C", repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum(os.path.getsize(os.path.join(repo, p.decode())) for p in listed if p and os.path.isfile(os.path.join(repo, p.decode())))


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def build(out: str = DEFAULT_OUT, *, size: str = "full", part_mib: float = DEFAULT_PART_MIB, wheels: str = "download",
          python_version: str = WHEEL_PYTHON) -> dict:
    """Write the kit's parts and manifest into `out` (replacing what is there); see the module docstring."""
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import gpu
    import gpu_fidelity

    part_bytes = int(part_mib * MIB)
    staging = tempfile.mkdtemp(prefix="gpu-kit-", dir=os.path.dirname(os.path.abspath(out)) or ".")
    try:
        os.makedirs(os.path.join(staging, "wheels"))
        if wheels == "download":
            download_wheels(os.path.join(staging, "wheels"), python_version)
        else:
            for name in KIT_PACKAGES:
                repack_installed(name, os.path.join(staging, "wheels"))
        gpu.prepare(os.path.join(staging, "gpu"), texts=GPU_TEXTS[size])
        gpu_fidelity.prepare(os.path.join(staging, "fidelity"), size)
        files = []
        for top in ("wheels", "gpu", "fidelity"):  # install first, then bench/gpu.py, then the fidelity run
            found = sorted(os.path.relpath(os.path.join(r, n), staging) for r, _, names in os.walk(os.path.join(staging, top)) for n in names)
            if top == "fidelity":  # the model last: its pieces are what the last part carries
                found.sort(key=lambda p: p.startswith("fidelity/model/"))
            files += found
        if os.path.exists(out):
            shutil.rmtree(out)
        os.makedirs(out)
        meta = {"size": size, "python": python_version if wheels == "download" else "%d.%d" % sys.version_info[:2],
                "wheels": wheels, "commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain")),
                "built": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        manifest = pack(staging, files, out, part_bytes, meta)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    sizes = [folder_bytes(os.path.join(out, f"part{p}")) for p in range(1, manifest["parts"] + 1)]
    over = [p + 1 for p, s in enumerate(sizes) if s > part_bytes]
    if over:
        raise RuntimeError(f"parts {over} are over {part_bytes} bytes: {sizes}")
    tree = tree_bytes()
    if tree is not None and tree + max(sizes) > DEVICE_CARRY_LIMIT:
        raise RuntimeError(f"the working tree ({tree / MIB:.1f} MiB) plus the largest part ({max(sizes) / MIB:.1f} MiB) is over "
                           f"the {DEVICE_CARRY_LIMIT // MIB} MiB one device call carries: build with a smaller --part-mib")
    return {"out": out, "parts": manifest["parts"], "part_mib": [round(s / MIB, 2) for s in sizes],
            "tree_mib": None if tree is None else round(tree / MIB, 2), "files": len(manifest["files"]),
            "kit_id": manifest["kit_id"]}


# --------------------------------------------------------------------------------------------
# stage / install / report (the GPU machine; standard library only)
# --------------------------------------------------------------------------------------------


class KitError(RuntimeError):
    """A part that is missing, damaged or from another kit; the message says what to do."""


def read_manifest(folder: str) -> dict:
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise KitError(f"{path} is missing: carry the kit's part folder (bench/gpu_assets/partN) with this call")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != KIT_FORMAT:
        raise KitError(f"{path} is a {manifest.get('format')!r} manifest, this script reads {KIT_FORMAT!r}: rebuild the kit")
    return manifest


def stage(part: int, assets: str, state: str) -> dict:
    """Check part `part`'s pieces against the manifest, copy them into `state`, assemble every complete file."""
    src = os.path.join(assets, f"part{part}")
    manifest = read_manifest(src)
    os.makedirs(os.path.join(state, "pieces"), exist_ok=True)
    kept = os.path.join(state, MANIFEST)
    if os.path.exists(kept):
        if read_manifest(state)["kit_id"] != manifest["kit_id"]:
            raise KitError(f"{state} holds another kit's parts: remove it (rm -rf {state}) and start again at step 1")
    else:
        shutil.copyfile(os.path.join(src, MANIFEST), kept)
    staged = 0
    for entry in manifest["files"]:
        for piece in entry["pieces"]:
            if piece["part"] != part:
                continue
            path = os.path.join(src, piece["name"])
            if not os.path.isfile(path) or os.path.getsize(path) != piece["bytes"] or sha256_file(path) != piece["sha256"]:
                raise KitError(f"piece {piece['name']} of {entry['path']} in {src} is missing or damaged "
                               f"(its sha256 is not the manifest's): rebuild the kit or copy the part again")
            shutil.copyfile(path, os.path.join(state, "pieces", piece["name"]))
            staged += 1
    complete, missing_parts = assemble(manifest, state)
    return {"part": part, "parts": manifest["parts"], "kit_id": manifest["kit_id"], "pieces_staged": staged,
            "complete": complete, "missing_parts": missing_parts}


def assemble(manifest: dict, state: str) -> tuple[list[str], list[int]]:
    """Join the pieces of every file that has them all (checking the whole file's sha256); returns the complete
    files and the parts whose pieces are still missing."""
    complete, missing = [], set()
    for entry in manifest["files"]:
        target = os.path.join(state, "files", entry["path"])
        if os.path.isfile(target) and os.path.getsize(target) == entry["bytes"]:
            complete.append(entry["path"])
            continue
        pieces = [os.path.join(state, "pieces", p["name"]) for p in entry["pieces"]]
        absent = [p["part"] for p, path in zip(entry["pieces"], pieces) if not os.path.isfile(path)]
        if absent:
            missing.update(absent)
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        digest = hashlib.sha256()
        with open(target + ".tmp", "wb") as out:
            for path in pieces:
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(8 * MIB), b""):
                        out.write(block)
                        digest.update(block)
        if digest.hexdigest() != entry["sha256"]:
            os.remove(target + ".tmp")
            raise KitError(f"{entry['path']} assembled from its pieces does not have the manifest's sha256: rebuild the kit")
        os.replace(target + ".tmp", target)
        complete.append(entry["path"])
    return complete, sorted(missing)


def _complete(status: dict, prefix: str, manifest: dict) -> bool:
    wanted = [e["path"] for e in manifest["files"] if e["path"].startswith(prefix)]
    return bool(wanted) and set(wanted) <= set(status["complete"])


def child_env(state: str) -> dict:
    """The environment of the step's children: the kit's site first, then the repository (hf_idsel, bench/)."""
    env = dict(os.environ)
    paths = [os.path.join(state, "site"), REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update(PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", HF_HOME=os.path.join(state, "hf"))
    return env


def install(state: str, manifest: dict) -> dict:
    """pip-install the kit's wheels into <state>/site (no index, no dependencies: the image has the rest)."""
    wheels = [os.path.join(state, "files", e["path"]) for e in manifest["files"] if e["path"].startswith("wheels/")]
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", os.path.join(state, "site"), *wheels], check=True)
    done = {"wheels": [os.path.basename(w) for w in wheels], "seconds": time.monotonic() - started}
    with open(os.path.join(state, "installed.json"), "w", encoding="utf-8") as f:
        json.dump(done, f)
    return done


def report(state: str) -> dict:
    """What this machine has: versions, where each package imports from, the kit wheels' unmet requirements, the
    GPU; run in the children's environment (after `install`)."""
    import importlib.util

    from packaging.requirements import Requirement

    site = os.path.join(state, "site")
    out = {"python": sys.version.split()[0], "versions": {}, "imports_from": {}, "unmet": [], "imports": {}}
    for name in REPORTED + KIT_PACKAGES:
        try:
            out["versions"][name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out["versions"][name] = None
    for module in ("datasets", "trl", "faiss", "gguf", "dill", "multiprocess", "hf_idsel", "transformers", "torch"):
        spec = importlib.util.find_spec(module)
        origin = None if spec is None else (spec.origin or list(spec.submodule_search_locations or [""])[0])
        out["imports_from"][module] = None if origin is None else ("kit" if origin.startswith(site) else origin)
    for name in KIT_PACKAGES:
        dist = importlib.metadata.distribution(name)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                have = importlib.metadata.version(req.name)
            except importlib.metadata.PackageNotFoundError:
                have = None
            if have is None or (req.specifier and not req.specifier.contains(have, prereleases=True)):
                out["unmet"].append(f"{name} needs {req}, found {have}")
    for module in ("datasets", "trl", "faiss", "gguf", "hf_idsel", "hf_idsel.trainer", "sentence_transformers"):
        started = time.monotonic()
        try:
            importlib.import_module(module)
            out["imports"][module] = f"ok ({time.monotonic() - started:.1f} s)"
        except Exception as error:  # noqa: BLE001 - reported, the step goes on to say what else works
            out["imports"][module] = f"{type(error).__name__}: {error}"
    import torch

    out["cuda"] = torch.cuda.is_available()
    if out["cuda"]:
        a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()
        out.update(gpu=torch.cuda.get_device_name(0), bf16=torch.cuda.is_bf16_supported(),
                   bf16_tflops=round(10 * 2 * 4096**3 / (time.perf_counter() - started) / 1e12, 1),
                   torch_cuda=torch.version.cuda)
    return out


def run_child(command: list[str], seconds: float, env: dict) -> dict:
    """Run `command` for at most `seconds`; at the limit its process group gets SIGTERM, then SIGKILL 10 s later.
    Its output goes to ours (the step's log)."""
    started = time.monotonic()
    print(f"$ {' '.join(command)}   (limit {seconds:.0f} s)", flush=True)
    if seconds <= 0:
        return {"command": command, "rc": None, "seconds": 0.0, "timed_out": True, "skipped": "no time left"}
    child = subprocess.Popen(command, env=env, cwd=REPO, start_new_session=True)
    timed_out = False
    try:
        rc = child.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(child.pid, signal.SIGTERM)
        try:
            rc = child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            rc = child.wait()
    return {"command": command, "rc": rc, "seconds": round(time.monotonic() - started, 1), "timed_out": timed_out}


def _nvidia_smi() -> str:
    try:
        return subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return f"nvidia-smi: {error}"


def step(n: int, *, out: str, assets: str = DEFAULT_OUT, state: str = DEFAULT_STATE, seconds: float = 580,
         gpu_seconds: float = 240) -> int:
    """One call of the sequence (see the module docstring); writes <out>/step<n>.json and returns the exit status."""
    started = time.monotonic()
    deadline = started + seconds - RESERVE_S
    os.makedirs(out, exist_ok=True)
    result = {"step": n, "seconds_given": seconds}

    def save(rc: int) -> int:
        result.update(rc=rc, seconds=round(time.monotonic() - started, 1))
        with open(os.path.join(out, f"step{n}.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        return rc

    try:
        status = stage(n, assets, state)
    except KitError as error:
        print(f"STOP: {error}", flush=True)
        result["error"] = str(error)
        return save(3)
    result["stage"] = {k: v for k, v in status.items() if k != "complete"}
    manifest = read_manifest(state)
    print(f"kit {manifest['kit_id']} ({manifest.get('size')}, built {manifest.get('built')} at {manifest.get('commit')}"
          f"{' +changes' if manifest.get('dirty') else ''}): part {n} of {manifest['parts']} staged; "
          f"parts still missing: {status['missing_parts'] or 'none'}", flush=True)
    earlier = [p for p in status["missing_parts"] if p < n]
    if earlier:
        result["error"] = (f"parts {earlier} are not in {state}: this machine is not the one the earlier steps ran on "
                           f"(the 30 s warm window was missed). bench/GPU_RUN.md says what to do.")
        print(f"STOP: {result['error']}", flush=True)
        return save(4)
    env = child_env(state)
    # The children record which kit (and so which commit's pool and code) they ran from.
    env["GPUKIT_KIT"] = json.dumps({k: manifest.get(k) for k in ("kit_id", "commit", "dirty", "built", "size")})
    if _complete(status, "wheels/", manifest) and not os.path.exists(os.path.join(state, "installed.json")):
        try:
            result["install"] = install(state, manifest)
        except subprocess.CalledProcessError as error:
            result["error"] = f"pip could not install the kit's wheels (exit status {error.returncode}; its output is above)"
            print(f"BLOCKING: {result['error']}", flush=True)
            return save(6)
        print(f"installed {len(result['install']['wheels'])} wheels in {result['install']['seconds']:.0f} s", flush=True)
    if n == 1:
        print(_nvidia_smi(), flush=True)
        try:
            probe = subprocess.run([sys.executable, os.path.abspath(__file__), "report", "--state", state], env=env,
                                   cwd=REPO, capture_output=True, text=True, timeout=max(30.0, deadline - time.monotonic()))
            result["report"] = json.loads(probe.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError, subprocess.TimeoutExpired) as error:
            output = (probe.stdout + probe.stderr) if not isinstance(error, subprocess.TimeoutExpired) else "timed out"
            result["report"] = {"error": output[-3000:]}
        print(json.dumps(result["report"], indent=1), flush=True)
        broken = {m: v for m, v in result["report"].get("imports", {"report": "did not run"}).items() if not v.startswith("ok")}
        if broken:  # nothing later can run without these: the session stops here (bench/GPU_RUN.md)
            result["error"] = f"imports that fail: {broken}"
            print(f"BLOCKING: {result['error']}", flush=True)
            return save(6)
    size = manifest.get("size")
    if _complete(status, "gpu/", manifest) and not os.path.exists(os.path.join(out, "gpu.json")) \
            and not os.path.exists(os.path.join(state, "gpu_done")):
        command = [sys.executable, "bench/gpu.py", "run", "--assets", os.path.join(state, "files", "gpu"),
                   "--json", os.path.join(out, "gpu.json"), *GPU_ARGS[size]]
        result["gpu"] = run_child(command, min(gpu_seconds, deadline - time.monotonic()), env)
        open(os.path.join(state, "gpu_done"), "w").close()  # once per machine, even when cut: its stages are in gpu.json
    if n == manifest["parts"]:
        if status["missing_parts"]:
            result["error"] = f"parts {status['missing_parts']} are missing at the last step"
            return save(4)
        left = deadline - time.monotonic()
        command = [sys.executable, "bench/gpu_fidelity.py", "run", "--kit", os.path.join(state, "files", "fidelity"),
                   "--json", os.path.join(out, "gpu_fidelity.json"), "--deadline", f"{time.time() + left - 15:.0f}"]
        result["fidelity"] = run_child(command, left, env)
        # A run that ended by itself printed its report; one cut at its limit left its results file.
        if result["fidelity"]["rc"] != 0 and os.path.exists(os.path.join(out, "gpu_fidelity.json")):
            shown = subprocess.run([sys.executable, "bench/gpu_fidelity.py", "report", "--json",
                                    os.path.join(out, "gpu_fidelity.json")], env=env, cwd=REPO, capture_output=True,
                                   text=True, timeout=120)
            print(shown.stdout[-6000:] or shown.stderr[-3000:], flush=True)
    failed = [k for k in ("gpu", "fidelity") if k in result and result[k]["rc"] not in (0,) and not result[k]["timed_out"]]
    return save(5 if failed else 0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the kit (here, on the CPU)")
    b.add_argument("--out", default=DEFAULT_OUT)
    b.add_argument("--size", choices=("full", "tiny"), default="full", help="tiny: the CPU rehearsal's kit")
    b.add_argument("--part-mib", type=float, default=DEFAULT_PART_MIB)
    b.add_argument("--wheels", choices=("download", "installed"), default="download")
    b.add_argument("--python-version", default=WHEEL_PYTHON)
    s = sub.add_parser("step", help="one call of the sequence (on the GPU machine)")
    s.add_argument("n", type=int)
    s.add_argument("--out", required=True, help="where results go ($OUT on the device)")
    s.add_argument("--assets", default=DEFAULT_OUT)
    s.add_argument("--state", default=os.environ.get("GPUKIT_STATE", DEFAULT_STATE))
    s.add_argument("--seconds", type=float, default=580, help="wall time this step may take")
    s.add_argument("--gpu-seconds", type=float, default=240, help="at most this long for bench/gpu.py")
    r = sub.add_parser("report", help="versions and the GPU, as JSON (step 1 runs it)")
    r.add_argument("--state", default=DEFAULT_STATE)
    args = parser.parse_args(argv)
    if args.command == "build":
        print(json.dumps(build(args.out, size=args.size, part_mib=args.part_mib, wheels=args.wheels,
                               python_version=args.python_version)))
        return 0
    if args.command == "report":
        print(json.dumps(report(args.state)))
        return 0
    return step(args.n, out=args.out, assets=args.assets, state=args.state, seconds=args.seconds,
                gpu_seconds=args.gpu_seconds)


if __name__ == "__main__":
    sys.exit(main())
