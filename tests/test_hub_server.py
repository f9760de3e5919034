"""The loopback Hub of tests/hub_server.py answers the real clients (huggingface_hub, datasets) the way hf_idsel's
pushes and loads need, and its failure injection surfaces the errors that the clients really raise. Client
features hf_idsel does not use (branches, pull requests, copies) are not tested here."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib

import datasets
import httpx2
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    DatasetCard,
    HfApi,
    HfFileSystem,
    hf_hub_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
)



def tiny_png(width: int = 3, height: int = 2) -> bytes:
    """A valid RGB PNG built with the stdlib (binary, with NUL bytes: the Hub stores it in LFS)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    pixel = lambda x, y: bytes((x * 40 % 256, y * 60 % 256, 200))  # noqa: E731
    rows = b"".join(b"\x00" + b"".join(pixel(x, y) for x in range(width)) for y in range(height))  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def commit_requests(hub, repo_id: str, since: int) -> list[int]:
    """Statuses of the POST .../commit/ requests made for `repo_id` after request number `since`."""
    requests = hub.server.requests[since:]
    return [status for method, path, status in requests if method == "POST" and f"{repo_id}/commit/" in path]


# --------------------------------------------------------------------------------------------- round trips
def test_dataset_configs_round_trip(hub, tmp_path):
    repo = hub.repo("pool")
    round_1 = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "score": [0.5, 1.5, 2.5]})
    round_2 = datasets.Dataset.from_dict({"text": ["x", "y"], "score": [9.0, 8.0]})

    round_1.push_to_hub(repo, config_name="round_1", set_default=True)
    round_2.push_to_hub(repo, config_name="round_2")

    files = hub.server.files(repo)
    assert "round_1/train-00000-of-00001.parquet" in files and "round_2/train-00000-of-00001.parquet" in files
    assert [c.message for c in hub.server.commits(repo)] == ["initial commit", "Upload dataset", "Upload dataset"]
    cache = str(tmp_path / "cache")
    assert datasets.load_dataset(repo, "round_1", split="train", cache_dir=cache).to_dict() == round_1.to_dict()
    assert datasets.load_dataset(repo, "round_2", split="train", cache_dir=cache).to_dict() == round_2.to_dict()
    # set_default=True made round_1 the config loaded without a name.
    assert datasets.load_dataset(repo, split="train", cache_dir=cache).to_dict() == round_1.to_dict()
    assert hub.server.unhandled == []


def test_upload_file_json_and_png_round_trip(hub, tmp_path):
    repo = hub.repo("assets")
    api = HfApi()  # no explicit endpoint/token: what the fixture patched must be enough
    api.create_repo(repo, repo_type="dataset")
    manifest = json.dumps({"rounds": 2, "seed": 0}).encode()
    image = tiny_png()
    api.upload_file(path_or_fileobj=manifest, path_in_repo="meta/manifest.json", repo_id=repo, repo_type="dataset")
    first_sha = hub.server.head(repo)
    since = len(hub.server.requests)
    api.upload_file(path_or_fileobj=image, path_in_repo="plots/loss.png", repo_id=repo, repo_type="dataset")
    # hf_xet is installed: only HF_HUB_DISABLE_XET keeps the upload on the LFS basic transfer.
    assert [(m, s) for m, p, s in hub.server.requests[since:] if p.startswith("/lfs-upload/")] == [("PUT", 200)]

    for path, content in (("meta/manifest.json", manifest), ("plots/loss.png", image)):
        local = hf_hub_download(repo, path, repo_type="dataset", cache_dir=tmp_path)
        with open(local, "rb") as f:
            assert f.read() == content
    # The JSON went inline in the commit, the PNG through the LFS batch + PUT upload.
    entries = api.get_paths_info(repo, ["meta/manifest.json", "plots/loss.png"], repo_type="dataset")
    info = {entry.path: entry for entry in entries}
    assert info["meta/manifest.json"].lfs is None
    assert info["plots/loss.png"].lfs is not None and info["plots/loss.png"].lfs.size == len(image)
    # Commits are snapshots: the first one has no PNG.
    assert "plots/loss.png" not in hub.server.files(repo, revision=first_sha)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "plots/loss.png", repo_type="dataset", revision=first_sha, cache_dir=tmp_path)
    listed = sorted(api.list_repo_files(repo, repo_type="dataset"))
    assert listed == [".gitattributes", "meta/manifest.json", "plots/loss.png"]


def test_missing_folder_and_file_answer_entry_not_found(hub, tmp_path):
    repo = hub.repo("sparse")
    api = HfApi()
    api.create_repo(repo, repo_type="dataset")
    with pytest.raises(RemoteEntryNotFoundError):
        list(api.list_repo_tree(repo, path_in_repo="no/such/folder", repo_type="dataset"))
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo, "missing.json", repo_type="dataset", cache_dir=tmp_path)
    assert HfFileSystem().exists(f"datasets/{repo}/.gitattributes")
    assert not HfFileSystem().exists(f"datasets/{repo}/missing.json")


def test_dataset_card_push_keeps_configs(hub):
    repo = hub.repo("carded")
    datasets.Dataset.from_dict({"text": ["a", "b"]}).push_to_hub(repo, config_name="round_1")

    card = DatasetCard.load(repo)
    configs = [{"config_name": "round_1", "data_files": [{"split": "train", "path": "round_1/train-*"}]}]
    assert card.data.to_dict()["configs"] == configs
    card.text = "# Selected pool\n\nRound 1 of the iterative selection.\n"
    card.push_to_hub(repo)

    reloaded = DatasetCard.load(repo)
    assert reloaded.text.strip() == card.text.strip()
    assert reloaded.data.to_dict()["configs"] == configs
    assert hub.server.files(repo)["README.md"].decode().startswith("---\n")
    assert datasets.load_dataset(repo, "round_1", split="train")["text"] == ["a", "b"]


# ------------------------------------------------------------------------------------------ auth and privacy
def test_private_repo_needs_a_token(hub, tmp_path):
    repo = hub.repo("secret")
    api = HfApi()
    api.create_repo(repo, repo_type="dataset", private=True)
    api.upload_file(path_or_fileobj=b'{"a": 1}', path_in_repo="x.json", repo_id=repo, repo_type="dataset")

    assert hub.server.is_private(repo)
    assert api.repo_info(repo, repo_type="dataset").private is True
    anonymous = HfApi(token=False)
    with pytest.raises(RepositoryNotFoundError) as info:
        anonymous.repo_info(repo, repo_type="dataset")
    assert info.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo, "x.json", repo_type="dataset", token=False, cache_dir=tmp_path / "anon")
    with open(hf_hub_download(repo, "x.json", repo_type="dataset", cache_dir=tmp_path / "auth"), "rb") as f:
        assert f.read() == b'{"a": 1}'
    # Another user's token gets 404, as on the Hub (the repo's existence is not revealed).
    hub.server.add_token("hf_other_user_token", "other")
    with pytest.raises(RepositoryNotFoundError) as info:
        HfApi(token="hf_other_user_token").repo_info(repo, repo_type="dataset")
    assert info.value.response.status_code == 404


def test_bad_or_missing_token_is_rejected(hub):
    bad = HfApi(token="hf_not_a_valid_token")
    with pytest.raises(HfHubHTTPError) as info:
        bad.whoami()
    assert info.value.response.status_code == 401
    repo = hub.repo("denied")
    with pytest.raises(HfHubHTTPError) as info:
        bad.create_repo(repo, repo_type="dataset")
    assert info.value.response.status_code == 401
    assert not hub.server.repo_exists(repo)
    with pytest.raises(HfHubHTTPError) as info:
        HfApi(token=False).create_repo(repo, repo_type="dataset")
    assert info.value.response.status_code == 401
    assert HfApi().whoami()["name"] == hub.user


def test_create_repo_conflict(hub):
    repo = hub.repo("twice")
    api = HfApi()
    first = api.create_repo(repo, repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as info:
        api.create_repo(repo, repo_type="dataset")
    assert info.value.response.status_code == 409
    assert info.value.response.json()["url"] == first  # the 409 body keeps the url, like the Hub's
    assert api.create_repo(repo, repo_type="dataset", exist_ok=True).repo_id == repo


def test_stale_parent_commit_is_refused(hub):
    repo = hub.repo("racy")
    api = HfApi()
    api.create_repo(repo, repo_type="dataset")
    stale = hub.server.head(repo)
    api.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id=repo, repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as info:
        api.create_commit(
            repo,
            [CommitOperationAdd("b.txt", b"2")],
            commit_message="late",
            repo_type="dataset",
            parent_commit=stale,
        )
    assert info.value.response.status_code == 412
    assert "b.txt" not in hub.server.files(repo)


# ---------------------------------------------------------------------------------------- failure injection
def test_injected_500_on_commit_is_not_retried(hub):
    repo = hub.repo("flaky-commit")
    api = HfApi()
    api.create_repo(repo, repo_type="dataset")
    hub.server.fail(status=500, path_regex=r"/commit/", times=1, method="POST")
    since = len(hub.server.requests)
    with pytest.raises(HfHubHTTPError) as info:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo, repo_type="dataset")
    assert info.value.response.status_code == 500
    assert "Injected failure" in str(info.value)
    # create_commit posts once: huggingface_hub does not retry the commit call itself.
    assert commit_requests(hub, repo, since) == [500]
    assert "x.txt" not in hub.server.files(repo)
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo, repo_type="dataset")
    assert hub.server.files(repo)["x.txt"] == b"x"


@pytest.mark.parametrize("status", [503, 429])
def test_transient_errors_before_the_commit_are_retried(hub, status):
    # preupload, LFS batch and the LFS PUT go through http_backoff: 408/429/500/502/503/504 are retried
    # (1 s, 2 s, 4 s... apart; Retry-After seconds + 1 when the server sends it).
    repo = hub.repo("flaky-preupload")
    api = HfApi()
    api.create_repo(repo, repo_type="dataset")
    hub.server.fail(status=status, path_regex=r"/preupload/", times=1, headers={"Retry-After": "0"})
    since = len(hub.server.requests)
    started = time.monotonic()
    api.upload_file(path_or_fileobj=b"y", path_in_repo="y.txt", repo_id=repo, repo_type="dataset")
    assert time.monotonic() - started >= 1.0  # one back-off sleep
    preuploads = [s for m, p, s in hub.server.requests[since:] if "/preupload/" in p]
    assert preuploads == [status, 200]
    assert hub.server.files(repo)["y.txt"] == b"y"


def test_dropped_connection_on_commit_surfaces(hub):
    repo = hub.repo("net-down")
    api = HfApi()
    api.create_repo(repo, repo_type="dataset")
    hub.server.drop(r"/commit/")
    since = len(hub.server.requests)
    with pytest.raises(httpx2.TransportError) as info:
        api.upload_file(path_or_fileobj=b"z", path_in_repo="z.txt", repo_id=repo, repo_type="dataset")
    # Neither an HfHubHTTPError nor a builtin ConnectionError: httpx2's RemoteProtocolError.
    assert isinstance(info.value, httpx2.RemoteProtocolError)
    assert not isinstance(info.value, (HfHubHTTPError, ConnectionError))
    assert commit_requests(hub, repo, since) == [0]
    assert "z.txt" not in hub.server.files(repo)
    api.upload_file(path_or_fileobj=b"z", path_in_repo="z.txt", repo_id=repo, repo_type="dataset")
    assert hub.server.files(repo)["z.txt"] == b"z"


def test_dropped_lfs_upload_is_retried(hub):
    repo = hub.repo("net-blip")
    api = HfApi()
    api.create_repo(repo, repo_type="dataset")
    hub.server.drop(r"^/lfs-upload/", method="PUT")
    image = tiny_png(5, 5)
    api.upload_file(path_or_fileobj=image, path_in_repo="img.png", repo_id=repo, repo_type="dataset")
    assert [s for m, p, s in hub.server.requests if p.startswith("/lfs-upload/")][-2:] == [0, 200]
    assert hub.server.files(repo)["img.png"] == image
    assert hub.server.pending_failures() == 0


def test_a_stalled_request_is_read_and_never_answered_until_released(hub):
    """stall(): the server takes the request and says nothing, so only the client's own timeout ends the call (the
    shared huggingface_hub client has none by default); released, the server answers again."""
    repo = hub.repo("stalled")
    hub.server.stall(r"/api/repos/create", method="POST")
    with httpx2.Client(timeout=httpx2.Timeout(1.0, connect=5.0)) as client:
        start = time.monotonic()
        with pytest.raises(httpx2.ReadTimeout):
            client.post(
                f"{hub.endpoint}/api/repos/create", json={"name": repo.split("/")[1], "type": "dataset"},
                headers={"authorization": f"Bearer {hub.token}"},
            )
        assert 0.9 < time.monotonic() - start < 10
    assert not hub.server.repo_exists(repo, "dataset") and hub.server.pending_failures() == 0
    hub.server.clear_failures()
    HfApi().create_repo(repo, repo_type="dataset")
    assert hub.server.repo_exists(repo, "dataset")


def test_dataset_push_fails_cleanly_on_commit_error(hub):
    repo = hub.repo("push-fail")
    ds = datasets.Dataset.from_dict({"text": ["a"]})
    ds.push_to_hub(repo, config_name="round_1")
    before = hub.server.head(repo)
    hub.server.fail(status=500, path_regex=rf"{repo}/commit/", times=1)
    with pytest.raises(HfHubHTTPError) as info:
        ds.push_to_hub(repo, config_name="round_2")
    assert info.value.response.status_code == 500
    assert hub.server.head(repo) == before  # nothing half-committed


# -------------------------------------------------------------------------------------------------- plumbing
def test_no_client_keeps_the_default_endpoint(hub):
    """Every HfApi / HfFileSystem held by an imported module points at the loopback server."""
    stale = []
    for name, module in list(sys.modules.items()):
        for attr, value in list(getattr(module, "__dict__", {}).items()):
            # type() rather than isinstance(): the latter reads __class__, which some lazy module proxies warn on.
            if issubclass(type(value), (HfApi, HfFileSystem)) and value.endpoint != hub.endpoint:
                stale.append(f"{name}.{attr}")
    assert stale == []
    import huggingface_hub.constants as constants

    assert constants.ENDPOINT == hub.endpoint
    assert not constants.is_offline_mode() and constants.HF_HUB_DISABLE_XET
    assert datasets.config.HF_ENDPOINT == hub.endpoint and not datasets.config.HF_HUB_OFFLINE


def test_env_points_a_subprocess_at_the_server(hub):
    repo = hub.repo("from-subprocess")
    code = (
        "import sys\n"
        "from huggingface_hub import HfApi\n"
        "api = HfApi()\n"
        "api.create_repo(sys.argv[1], repo_type='dataset')\n"
        "api.upload_file(path_or_fileobj=b'hello', path_in_repo='hello.txt', repo_id=sys.argv[1],\n"
        "                repo_type='dataset')\n"
    )
    env = {**os.environ, **hub.env()}
    subprocess.run([sys.executable, "-c", code, repo], env=env, check=True, timeout=60)
    assert hub.server.files(repo)["hello.txt"] == b"hello"


def test_clients_are_offline_again_outside_the_fixture(hub_server):
    """Without `hub`, the process is back to the suite's offline setup (conftest sets HF_HUB_OFFLINE=1)."""
    import huggingface_hub.constants as constants

    assert constants.is_offline_mode() and datasets.config.HF_HUB_OFFLINE
    assert constants.ENDPOINT != hub_server.endpoint and datasets.config.HF_ENDPOINT != hub_server.endpoint
    assert os.environ.get("HF_ENDPOINT") != hub_server.endpoint and os.environ.get("HF_TOKEN") != hub_server.token
    for name, module in list(sys.modules.items()):
        for attr, value in list(getattr(module, "__dict__", {}).items()):
            if issubclass(type(value), (HfApi, HfFileSystem)):
                assert value.endpoint != hub_server.endpoint, f"{name}.{attr}"
    with pytest.raises(Exception, match="offline mode is enabled"):
        HfApi().whoami(token="anything")
