"""Embed, fast: a static (bag of token vectors) encoder distilled from a sentence-transformers model.

`encoder="static:<model>"` (`"static"` alone: the packaged all-MiniLM-L6-v2) embeds each row as the
mean of per-token vectors, with no transformer at run time. The token vectors follow model2vec's
recipe, computed from the model itself so nothing is downloaded: every vocabulary token is run
through the model on its own (`[CLS] token [SEP]`), the outputs are reduced with PCA, and each is
weighted by a Zipf estimate of its frequency (SIF weighting: frequent tokens count less). The
weights are built once (deterministically), stored as safetensors in the cache folder with their
sha256, and checked against it every time they are loaded; their digest is part of the encoder's
revision, so it reaches the embedding cache key and the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from typing import Any

import numpy as np

from .cache import ModelIdentity, cache_dir, fingerprint
from .errors import InvalidArgumentError

logger = logging.getLogger(__name__)

STATIC_PREFIX = "static"
# Bump when the distillation changes, so weights built by an older recipe are rebuilt.
_RECIPE = {"version": 1, "pooling": "model", "pca_dims": 256, "sif_coefficient": 1e-4, "zipf": "token id rank"}


def is_static(encoder: Any) -> bool:
    """Whether `encoder` names a static encoder: `"static"` or `"static:<sentence-transformers model>"`."""
    return isinstance(encoder, str) and (encoder == STATIC_PREFIX or encoder.startswith(STATIC_PREFIX + ":"))


def static_base(encoder: str, default: str) -> str:
    """The model a static encoder is distilled from (`default` for a bare `"static"`)."""
    base = encoder[len(STATIC_PREFIX) + 1 :] if ":" in encoder else default
    if not base:
        raise InvalidArgumentError(f"`encoder`={encoder!r} names no model after 'static:'; use e.g. 'static:{default}' or 'static'.")
    return base


def static_identity(base: ModelIdentity, weights_path: str, digest: str) -> ModelIdentity:
    """The static encoder's identity: its base model's id and revision plus the digest of the derived weights."""
    return ModelIdentity(f"{STATIC_PREFIX}:{base.id}", f"{base.revision}+static-{digest[:16]}", weights_path)


def static_weights(base: ModelIdentity, load_base, *, directory: str | None = None) -> tuple[np.ndarray, str, str]:
    """The distilled token vectors of `base` as `(weights, path, sha256)`, built and cached on first use.

    A cached file is used only when it is a safetensors file written for this base model, revision and
    recipe, and its weights hash to the sha256 stored with them; anything else is logged and rebuilt.

    Args:
        base ([`~cache.ModelIdentity`]):
            The sentence-transformers model the vectors are distilled from.
        load_base (`Callable[[], SentenceTransformer]`):
            Loads that model (called only when the weights must be built).
        directory (`str`, *optional*):
            Cache folder; defaults to [`~cache.cache_dir`].
    """
    built = built_static_weights(base, directory=directory, discard=True)
    if built is not None:
        return built
    expected, path = _expected(base), _weights_path(base, directory)
    weights = distill(load_base())
    digest = _digest(weights)
    _write_weights(path, weights, {**expected, "sha256": digest})
    return weights, path, digest


def built_static_weights(base: ModelIdentity, *, directory: str | None = None, discard: bool = False):
    """`(weights, path, sha256)` of `base`'s static weights when valid ones are cached, else `None`; never builds.

    A dry run asks this to learn whether the weights (and so the embedding cache) exist without paying
    for a build. `discard=True` removes an invalid file (logged), so the caller rebuilds it.
    """
    path = _weights_path(base, directory)
    if not os.path.exists(path):
        return None
    weights, digest, problem = _read_weights(path, _expected(base))
    if problem is None:
        logger.info("Loaded static encoder weights from %s", path)
        return weights, path, digest
    if discard:
        logger.warning("Discarding the static encoder weights %s: %s. Rebuilding them.", path, problem)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    return None


def _expected(base: ModelIdentity) -> dict:
    return {"base_id": base.id, "base_revision": base.revision, "recipe": fingerprint(_RECIPE)}


def _weights_path(base: ModelIdentity, directory: str | None) -> str:
    return os.path.join(cache_dir(directory), f"static-{fingerprint(base.id, base.revision, _RECIPE)}.safetensors")


def distill(model) -> np.ndarray:
    """Token vectors of a sentence-transformers `model`: its output for each vocabulary token alone,
    reduced by PCA and SIF-weighted by a Zipf estimate of token frequency (model2vec's recipe).

    Returns:
        `np.ndarray`: `(vocabulary size, min(256, model dimension))` float32.
    """
    import torch
    from datasets.utils import tqdm as hf_tqdm
    from sklearn.decomposition import PCA

    tokenizer = model.tokenizer
    ids = torch.arange(max(tokenizer.get_vocab().values()) + 1)  # every id the tokenizer can emit, gaps included
    # Where one token sits among the model's special tokens (e.g. [CLS] token [SEP]).
    (token,) = tokenizer("a", add_special_tokens=False)["input_ids"]
    specials = tokenizer("a")["input_ids"]
    slot = specials.index(token)
    device = model.device
    outputs = []
    with torch.inference_mode(), hf_tqdm(total=len(ids), desc="Distilling static encoder", unit=" tokens") as bar:
        for chunk in ids.split(1024):
            input_ids = torch.tensor(specials).repeat(len(chunk), 1)
            input_ids[:, slot] = chunk
            features = {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids).to(device)}
            if "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
                features["token_type_ids"] = torch.zeros_like(input_ids).to(device)
            outputs.append(model(features)["sentence_embedding"].float().cpu().numpy())
            bar.update(len(chunk))
    vectors = np.concatenate(outputs).astype(np.float64)
    dims = min(_RECIPE["pca_dims"], *vectors.shape)
    # svd_solver="full" is exact and deterministic (randomized solvers depend on a seed and on BLAS).
    vectors = PCA(n_components=dims, svd_solver="full").fit_transform(vectors)
    # Zipf: the token ids of WordPiece/BPE vocabularies roughly follow frequency; rare tokens weigh more.
    inverse_rank = 1.0 / np.arange(2, len(vectors) + 2)
    probability = inverse_rank / inverse_rank.sum()
    sif = _RECIPE["sif_coefficient"]
    vectors *= (sif / (sif + probability))[:, None]
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _digest(weights: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(weights, dtype="<f4").tobytes()).hexdigest()


def _read_weights(path: str, expected: dict) -> tuple[np.ndarray | None, str | None, str | None]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as file:
            metadata = file.metadata() or {}
            weights = file.get_tensor("embeddings")
    except Exception as err:  # truncated, not safetensors: rebuild
        return None, None, f"it cannot be read ({type(err).__name__}: {err})"
    for name, value in expected.items():
        if metadata.get(name) != value:
            return None, None, f"it was built for {name}={metadata.get(name)!r}, expected {value!r}"
    if weights.dtype != np.float32 or weights.ndim != 2 or not np.isfinite(weights).all():
        return None, None, f"its weights are {weights.dtype} {weights.shape}, not finite float32 (tokens, dims)"
    digest = _digest(weights)
    if digest != metadata.get("sha256"):
        return None, None, f"its weights hash to {digest[:16]}, not the stored {str(metadata.get('sha256'))[:16]}"
    return weights, digest, None


def _write_weights(path: str, weights: np.ndarray, metadata: dict) -> None:
    from safetensors.numpy import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".incomplete", dir=os.path.dirname(path))
    os.close(fd)
    try:
        save_file({"embeddings": weights}, partial, metadata=metadata)
        os.replace(partial, path)  # readers never see half a file
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)


def load_static(base_location: str, weights: np.ndarray, *, device: str | None = None):
    """A `SentenceTransformer` made of one `StaticEmbedding` over the base model's tokenizer and `weights`."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    try:
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import StaticEmbedding

    tokenizer = AutoTokenizer.from_pretrained(base_location)
    module = StaticEmbedding(tokenizer, embedding_weights=weights.copy())
    # CPU by default: for a bag of vectors, moving inputs to a GPU costs more than the lookup.
    return SentenceTransformer(modules=[module], device=device or "cpu")
