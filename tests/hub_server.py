"""A loopback HTTP server speaking the subset of the Hugging Face Hub API that the real clients use.

The Hub is unreachable in tests, yet publishing code must be exercised with the real clients
(`huggingface_hub.HfApi`, `datasets.Dataset.push_to_hub` / `load_dataset`, `transformers` `push_to_hub` /
`from_pretrained`, a `Trainer` pushing checkpoints). Point `HF_ENDPOINT` at `HubServer.endpoint`, set
`HF_HUB_DISABLE_XET=1` (uploads then go through the git-LFS "basic" transfer that this server implements)
and pass one of the server's tokens.

Stdlib only. Repositories live in memory as a chain of git-like commits (one 40-hex sha per commit,
branches pointing at commits, full snapshots per commit). What is implemented (see `_Handler._route`):

- `POST /api/repos/create` (409 keeps `url`), `DELETE /api/repos/delete`, `PUT /api/{type}s/{id}/settings`
- `GET /api/whoami-v2`, `POST /api/validate-yaml`
- `GET|HEAD /api/{type}s/{id}[/revision/{rev}]`, `GET .../tree/{rev}[/{path}]`, `POST .../paths-info/{rev}`,
  `GET .../refs`, `GET .../commits/{rev}`, `POST .../branch/{name}`
- `POST .../preupload/{rev}`, `POST .../commit/{rev}` (NDJSON, `parentCommit` -> 412 when stale, `create_pr`)
- `POST /{[datasets/]}{id}.git/info/lfs/objects/batch` (basic transfer), the one-time `PUT` upload URL it hands
  out (no auth, like a presigned S3 URL) and the optional verify `POST`
- `GET|HEAD /{[datasets/]}{id}/resolve/{rev}/{path}` (ETag, X-Repo-Commit, X-Linked-*, Range)

Anything else answers 404 with a `hub_server: unsupported endpoint` error and is recorded in `unhandled`.

Failure injection for failure-path tests: `fail()` answers the next N matching requests with an error status,
`drop()` closes the connection without answering (network down mid-push), `stall()` reads the request and never
answers (a server that hangs: only the client's timeout ends the call), `clear_failures()` removes them all and
lets stalled requests go (their connections are closed unanswered).
"""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import hashlib
import itertools
import json
import logging
import re
import secrets
import socket
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger("hub_server")

REPO_TYPES = ("model", "dataset", "space")
_PLURAL_TO_TYPE = {"models": "model", "datasets": "dataset", "spaces": "space"}
# URL prefix of a repo outside /api: models have none (the Hub's own convention).
_TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# Sub-routes after a repo id under /api/{type}s/: used to tell a bare id ("gpt2") from "ns/name".
_API_SUBROUTES = {
    "revision", "tree", "preupload", "commit", "commits", "paths-info", "refs", "branch", "settings", "resolve",
}

MAX_BODY_BYTES = 512 * 1024 * 1024
MAX_THREADS = 32
# A keep-alive connection idle this long is closed, freeing its thread slot.
IDLE_TIMEOUT_S = 20.0
# The Hub stores files above this size in LFS whatever their type.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lz4", "*.mds",
        "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle",
        "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz",
        "*.zip", "*.zst", "*tfevents*", "*.png", "*.jpg", "*.jpeg", "*.gif", "*.webp", "*.mp3", "*.wav",
        "*.flac", "*.mp4",
    )
)


class HubHTTPError(Exception):
    """An error answer: raised inside handlers, turned into a Hub-style JSON error response."""

    def __init__(self, status: int, message: str, *, code: str | None = None, extra: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code  # sent as X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound, ...)
        self.extra = extra or {}


@dataclasses.dataclass(frozen=True)
class StoredFile:
    """One file of a commit's snapshot."""

    content: bytes
    lfs: bool
    sha256: str
    git_oid: str  # git blob sha1 (of the LFS pointer for LFS files, as git does)
    pointer_size: int  # 0 for regular files

    @classmethod
    def make(cls, content: bytes, lfs: bool) -> StoredFile:
        sha256 = hashlib.sha256(content).hexdigest()
        if lfs:
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(content)}\n".encode()
            return cls(content, True, sha256, _git_hash(pointer), len(pointer))
        return cls(content, False, sha256, _git_hash(content), 0)

    @property
    def upload_oid(self) -> str:
        """The oid the clients compare with in preupload: sha256 for LFS files, git sha1 otherwise."""
        return self.sha256 if self.lfs else self.git_oid


@dataclasses.dataclass(frozen=True)
class Commit:
    """A commit: message, parent, author and the full snapshot of the repo after it."""

    sha: str
    parent: str | None
    message: str
    description: str
    author: str
    date: str
    files: dict[str, StoredFile]


@dataclasses.dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, Commit] = dataclasses.field(default_factory=dict)
    order: list[str] = dataclasses.field(default_factory=list)  # commit shas, oldest first
    branches: dict[str, str] = dataclasses.field(default_factory=dict)  # "main" / "refs/pr/1" -> sha
    lfs_objects: dict[str, bytes] = dataclasses.field(default_factory=dict)  # sha256 -> content
    pr_count: int = 0


@dataclasses.dataclass
class _Rule:
    kind: str  # "fail", "drop" or "stall"
    pattern: re.Pattern[str]
    method: str | None
    remaining: int
    status: int = 500
    error: str = ""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


def _git_hash(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _lfs_patterns(files: dict[str, StoredFile]) -> list[str]:
    attributes = files.get(".gitattributes")
    if attributes is None:
        return []
    patterns = []
    for line in attributes.content.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _matches_any(path: str, patterns: list[str]) -> bool:
    """gitattributes/gitignore-style match: a pattern without '/' matches the basename, a trailing '/' a folder."""
    name = path.rsplit("/", 1)[-1]
    parts = path.split("/")
    for pattern in patterns:
        if pattern.endswith("/"):
            folder = pattern.rstrip("/")
            if any(fnmatch.fnmatchcase(part, folder) for part in parts[:-1]):
                return True
        elif "/" in pattern.strip("/"):
            if fnmatch.fnmatchcase(path, pattern.lstrip("/")):
                return True
        elif fnmatch.fnmatchcase(name, pattern.lstrip("/")):
            return True
    return False


def _gitignore_patterns(text: str | None) -> list[str]:
    if not text:
        return []
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


class HubServer:
    """A Hub-compatible HTTP server on 127.0.0.1 (random port), served from a daemon thread.

    Args:
        token: the valid token of user `user` (random when omitted); more with `add_token`.
        user: the user name that `token` authenticates.
        max_body_bytes: requests with a larger body answer 413.
        max_threads: at most this many connections are served at once (the rest wait to be accepted).

    Attributes:
        endpoint: `http://127.0.0.1:<port>`, the value for `HF_ENDPOINT`.
        requests: `(method, path, status)` of every request answered, in order; path without the query string;
            status 0 for a connection dropped by `drop()`.
        unhandled: `(method, path)` of requests no route knew.
    """

    def __init__(
        self,
        token: str | None = None,
        user: str = "user",
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_threads: int = MAX_THREADS,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.requests: list[tuple[str, str, int]] = []
        self.unhandled: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._tokens: dict[str, tuple[str, frozenset[str]]] = {}
        self._rules: list[_Rule] = []
        self._release_stalled = threading.Event()  # set by clear_failures/close: stalled requests end unanswered
        # LFS upload id -> (repo key, oid, size): handed out by the batch call, consumed by the PUT.
        self._pending_uploads: dict[str, tuple[tuple[str, str], str, int]] = {}
        self._completed_uploads: dict[str, tuple[str, str]] = {}
        self._counter = itertools.count()
        self.token = token or f"hf_test_{secrets.token_hex(16)}"
        self.user = user
        self.add_token(self.token, user)

        self._httpd = _ThreadingServer(("127.0.0.1", 0), _Handler, max_threads=max_threads)
        self._httpd.hub = self
        host, port = self._httpd.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Stop serving and close every open connection."""
        # Connections first: with every thread slot taken, the accept loop waits for one and could not shut down.
        self._release_stalled.set()
        self._httpd.close_connections()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.close_connections()
        self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------- tokens
    def add_token(self, token: str, user: str, orgs: tuple[str, ...] = ()) -> None:
        """Accept `token` as user `user`, member of `orgs` (namespaces the token may write to)."""
        with self._lock:
            self._tokens[token] = (user, frozenset(orgs))

    def user_for(self, token: str | None) -> tuple[str, frozenset[str]] | None:
        with self._lock:
            return self._tokens.get(token) if token else None

    # -------------------------------------------------------------------------------------- failure injection
    def fail(
        self,
        status: int = 500,
        path_regex: str = ".*",
        times: int = 1,
        method: str | None = None,
        *,
        error: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next `times` requests whose path matches `path_regex` (re.search; and `method` when given)
        with `status` and a Hub-style `{"error": ...}` body; `headers` are added (e.g. `{"Retry-After": "0"}`)."""
        with self._lock:
            self._rules.append(
                _Rule(
                    "fail",
                    re.compile(path_regex),
                    method.upper() if method else None,
                    times,
                    status,
                    error or f"Injected failure: HTTP {status}",
                    dict(headers or {}),
                )
            )

    def drop(self, path_regex: str = ".*", times: int = 1, method: str | None = None) -> None:
        """Close the connection of the next `times` matching requests without answering, after reading their
        body: the client sees the server vanish mid-request."""
        with self._lock:
            self._rules.append(_Rule("drop", re.compile(path_regex), method.upper() if method else None, times))

    def stall(self, path_regex: str = ".*", times: int = 1, method: str | None = None) -> None:
        """Read the next `times` matching requests (body included) and never answer them: the connection stays open
        and silent until `clear_failures()` or `close()` (then it is closed unanswered). Each holds a thread slot."""
        with self._lock:
            self._release_stalled.clear()
            self._rules.append(_Rule("stall", re.compile(path_regex), method.upper() if method else None, times))

    def clear_failures(self) -> None:
        """Remove every pending `fail`/`drop`/`stall` rule, and close the connections of stalled requests unanswered."""
        with self._lock:
            self._rules.clear()
            self._release_stalled.set()

    def pending_failures(self) -> int:
        """How many injected failures are still to be served."""
        with self._lock:
            return sum(rule.remaining for rule in self._rules)

    def _take_rule(self, method: str, path: str) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.remaining > 0 and (rule.method is None or rule.method == method) and rule.pattern.search(path):
                    rule.remaining -= 1
                    if rule.remaining == 0:
                        self._rules.remove(rule)
                    return rule
        return None

    # ---------------------------------------------------------------------------------------- introspection
    def repo_exists(self, repo_id: str, repo_type: str = "dataset") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def is_private(self, repo_id: str, repo_type: str = "dataset") -> bool:
        """Whether the repo was created (or last set) private. KeyError if it does not exist."""
        with self._lock:
            return self._repos[(repo_type, repo_id)].private

    def files(self, repo_id: str, repo_type: str = "dataset", revision: str = "main") -> dict[str, bytes]:
        """Path -> content of every file at `revision` (a branch or a commit sha), `.gitattributes` included."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            commit = self._resolve(repo, revision)
            return {path: stored.content for path, stored in sorted(commit.files.items())}

    def commits(self, repo_id: str, repo_type: str = "dataset") -> list[Commit]:
        """All commits of the repo, oldest first (the repo's "initial commit" included)."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            return [repo.commits[sha] for sha in repo.order]

    def head(self, repo_id: str, repo_type: str = "dataset", revision: str = "main") -> str:
        """The commit sha a branch points to."""
        with self._lock:
            return self._resolve(self._repos[(repo_type, repo_id)], revision).sha

    # ------------------------------------------------------------------------------------------ repo storage
    def _create_repo(self, repo_type: str, repo_id: str, private: bool, author: str) -> _Repo:
        repo = _Repo(repo_type, repo_id, private)
        self._commit(
            repo,
            "main",
            {".gitattributes": StoredFile.make(DEFAULT_GITATTRIBUTES.encode(), lfs=False)},
            "initial commit",
            "",
            author,
        )
        self._repos[(repo_type, repo_id)] = repo
        return repo

    def _commit(
        self, repo: _Repo, branch: str, files: dict[str, StoredFile], message: str, description: str, author: str
    ) -> Commit:
        parent = repo.branches.get(branch)
        tree = sorted((path, stored.git_oid) for path, stored in files.items())
        seed = json.dumps([parent, message, description, next(self._counter), time.time_ns(), tree])
        commit = Commit(
            sha=hashlib.sha1(seed.encode()).hexdigest(),
            parent=parent,
            message=message,
            description=description,
            author=author,
            date=_now_iso(),
            files=dict(files),
        )
        repo.commits[commit.sha] = commit
        repo.order.append(commit.sha)
        repo.branches[branch] = commit.sha
        return commit

    @staticmethod
    def _resolve(repo: _Repo, revision: str) -> Commit:
        """A branch name or a (>= 7 hex) commit sha prefix -> the commit."""
        if revision in repo.branches:
            return repo.commits[repo.branches[revision]]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [sha for sha in repo.commits if sha.startswith(revision)]
            if len(matches) == 1:
                return repo.commits[matches[0]]
        raise HubHTTPError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")


class _ThreadingServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a bound on concurrent connections and a registry of open ones."""

    daemon_threads = True
    allow_reuse_address = True
    hub: HubServer

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, max_threads: int) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_threads)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        # Blocks the accept loop at the cap: idle keep-alive connections time out after IDLE_TIMEOUT_S.
        self._slots.acquire()
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: Any) -> None:
        with self._open_lock:
            if request in self._open:
                self._open.discard(request)
                self._slots.release()

    def close_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _DropConnection(Exception):
    """Raised by a handler to close the connection without an answer."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Hub; every answer carries Content-Length
    server_version = "hub_server"
    timeout = IDLE_TIMEOUT_S
    server: _ThreadingServer

    # --------------------------------------------------------------------------------------------- plumbing
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        logger.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                total += size
                if total > self.hub.max_body_bytes:
                    raise HubHTTPError(413, "Request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.hub.max_body_bytes:
            raise HubHTTPError(413, "Request body too large")
        return self.rfile.read(length) if length else b""

    def _record(self, status: int) -> None:
        """Log the request once, before the client can see the answer (tests read the log right after)."""
        if not self._recorded:
            self._recorded = True
            with self.hub._lock:
                self.hub.requests.append((self.command, self.route_path, status))

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path = split.path
        self.route_path = path
        self._recorded = False
        self.query = {key: values[-1] for key, values in parse_qs(split.query).items()}
        self.head_only = method == "HEAD"
        try:
            try:
                self.body = self._read_body()
            except HubHTTPError:
                self.close_connection = True  # the unread body makes the stream unusable
                raise
            rule = self.hub._take_rule(method, path)
            if rule is not None and rule.kind == "stall":
                self._record(0)  # logged on arrival: the answer never comes
                self.hub._release_stalled.wait()
                raise _DropConnection
            if rule is not None and rule.kind == "drop":
                raise _DropConnection
            if rule is not None:
                raise HubHTTPError(rule.status, rule.error, extra={"headers": rule.headers})
            self._route(method, path)
        except _DropConnection:
            self._record(0)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except HubHTTPError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a server bug must reach the test as a 500, not hang the client
            logger.exception("hub_server: error handling %s %s", method, path)
            self._send_error(HubHTTPError(500, f"hub_server internal error: {exc!r}"))
        finally:
            self._record(0)  # no-op when an answer was sent

    def _send(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        content_length: int | None = None,
    ) -> int:
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.send_header("X-Request-Id", f"Root={secrets.token_hex(8)}")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not self.head_only and body:
            self.wfile.write(body)
        return status

    def _json(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> int:
        return self._send(status, json.dumps(payload).encode(), headers=headers)

    def _send_error(self, err: HubHTTPError) -> None:
        headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode()}
        if err.code:
            headers["X-Error-Code"] = err.code
        extra = dict(err.extra)
        headers.update(extra.pop("headers", {}))
        if err.status == 413:
            self.close_connection = True
        self._json({"error": err.message, **extra}, status=err.status, headers=headers)

    def _unhandled(self, method: str, path: str) -> int:
        with self.hub._lock:
            self.hub.unhandled.append((method, path))
        logger.warning("hub_server: unsupported endpoint %s %s", method, path)
        raise HubHTTPError(404, f"hub_server: unsupported endpoint {method} {path}")

    # ------------------------------------------------------------------------------------------------ auth
    def _caller(self) -> tuple[str, frozenset[str]] | None:
        """The authenticated (user, orgs), None when anonymous; 401 for a token the server does not know."""
        header = self.headers.get("Authorization")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        user = self.hub.user_for(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise HubHTTPError(401, "Invalid credentials in Authorization header")
        return user

    @staticmethod
    def _namespaces(caller: tuple[str, frozenset[str]]) -> set[str]:
        return {caller[0], *caller[1]}

    def _require_user(self) -> tuple[str, frozenset[str]]:
        caller = self._caller()
        if caller is None:
            raise HubHTTPError(401, "You must be authenticated to access this resource (write access required)")
        return caller

    def _repo_for_read(self, repo_type: str, repo_id: str) -> _Repo:
        caller = self._caller()
        repo = self.hub._repos.get((repo_type, repo_id))
        owner = repo_id.split("/")[0]
        if repo is not None and repo.private and (caller is None or owner not in self._namespaces(caller)):
            repo = None  # the Hub does not reveal a private repo to others
        if repo is None:
            # Like the Hub: 401 for anonymous callers (could be private), 404 otherwise.
            raise HubHTTPError(401 if caller is None else 404, "Repository not found", code="RepoNotFound")
        return repo

    def _repo_for_write(self, repo_type: str, repo_id: str) -> tuple[_Repo, str]:
        caller = self._require_user()
        repo = self.hub._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and repo_id.split("/")[0] not in self._namespaces(caller)):
            raise HubHTTPError(404, "Repository not found", code="RepoNotFound")
        if repo_id.split("/")[0] not in self._namespaces(caller):
            raise HubHTTPError(403, f"You don't have the rights to write to {repo_type}s/{repo_id}")
        return repo, caller[0]

    # ----------------------------------------------------------------------------------------------- routes
    def _route(self, method: str, path: str) -> int:
        segments = [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
        hub = self.hub
        with hub._lock:
            if path == "/api/whoami-v2" and method == "GET":
                return self._whoami()
            if path == "/api/validate-yaml" and method == "POST":
                return self._json({"errors": [], "warnings": []})
            if path == "/api/repos/create" and method == "POST":
                return self._create_repo()
            if path == "/api/repos/delete" and method == "DELETE":
                return self._delete_repo()
            if path.startswith("/lfs-upload/") and method == "PUT":
                return self._lfs_put(segments[-1])
            if path.startswith("/lfs-verify/") and method == "POST":
                return self._lfs_verify(segments[-1])
            if path.endswith(".git/info/lfs/objects/batch") and method == "POST":
                return self._lfs_batch(path)
            if len(segments) >= 3 and segments[0] == "api" and segments[1] in _PLURAL_TO_TYPE:
                return self._api_repo(method, _PLURAL_TO_TYPE[segments[1]], segments[2:], path)
            if "resolve" in segments[:4] and method in ("GET", "HEAD"):
                return self._resolve_file(segments, path)
            return self._unhandled(method, path)

    def _whoami(self) -> int:
        caller = self._caller()
        if caller is None:
            raise HubHTTPError(401, "Invalid credentials in Authorization header")
        user, orgs = caller
        return self._json(
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user,
                "isPro": False,
                "orgs": [{"type": "org", "name": org, "fullname": org} for org in sorted(orgs)],
                "auth": {"type": "access_token", "accessToken": {"displayName": "hub_server", "role": "write"}},
            }
        )

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.hub.endpoint}/{_TYPE_PREFIX[repo_type]}{repo_id}"

    def _create_repo(self) -> int:
        user, orgs = self._require_user()
        payload = json.loads(self.body or b"{}")
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubHTTPError(400, f"Invalid repo type: {repo_type}")
        namespace = payload.get("organization") or user
        name = payload.get("name") or ""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", name) or "--" in name or ".." in name:
            raise HubHTTPError(400, f"Invalid repo name: {name!r}")
        if namespace not in {user, *orgs}:
            raise HubHTTPError(403, f"You don't have the rights to create a {repo_type} under namespace {namespace}")
        repo_id = f"{namespace}/{name}"
        url = self._repo_url(repo_type, repo_id)
        if (repo_type, repo_id) in self.hub._repos:
            # The real Hub keeps `url` in the 409 body; clients rely on it with exist_ok=True.
            raise HubHTTPError(409, f"You already created this {repo_type} repo", extra={"url": url})
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.hub._create_repo(repo_type, repo_id, private, user)
        return self._json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self) -> int:
        user, orgs = self._require_user()
        payload = json.loads(self.body or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or user}/{payload.get('name')}"
        self._repo_for_write(repo_type, repo_id)
        del self.hub._repos[(repo_type, repo_id)]
        return self._json({})

    # ------------------------------------------------------------------------------ /api/{type}s/{id}/...
    def _split_repo_id(self, repo_type: str, rest: list[str]) -> tuple[str, list[str]]:
        if len(rest) >= 2 and ((repo_type, f"{rest[0]}/{rest[1]}") in self.hub._repos or rest[1] not in _API_SUBROUTES):
            return f"{rest[0]}/{rest[1]}", rest[2:]
        return rest[0], rest[1:]

    def _api_repo(self, method: str, repo_type: str, rest: list[str], path: str) -> int:
        repo_id, sub = self._split_repo_id(repo_type, rest)
        action = sub[0] if sub else ""
        if method in ("GET", "HEAD") and action == "":
            return self._repo_info(repo_type, repo_id, "main")
        if method in ("GET", "HEAD") and action == "revision" and len(sub) >= 2:
            return self._repo_info(repo_type, repo_id, "/".join(sub[1:]))
        if method == "GET" and action == "tree" and len(sub) >= 2:
            return self._tree(repo_type, repo_id, sub[1], "/".join(sub[2:]))
        if method == "POST" and action == "paths-info" and len(sub) >= 2:
            return self._paths_info(repo_type, repo_id, "/".join(sub[1:]))
        if method == "POST" and action == "preupload" and len(sub) >= 2:
            return self._preupload(repo_type, repo_id, "/".join(sub[1:]))
        if method == "POST" and action == "commit" and len(sub) >= 2:
            return self._commit(repo_type, repo_id, "/".join(sub[1:]))
        if method == "GET" and action == "refs":
            return self._refs(repo_type, repo_id)
        if method == "GET" and action == "commits" and len(sub) >= 2:
            return self._list_commits(repo_type, repo_id, "/".join(sub[1:]))
        if method == "POST" and action == "branch" and len(sub) >= 2:
            return self._create_branch(repo_type, repo_id, "/".join(sub[1:]))
        if method == "PUT" and action == "settings":
            return self._settings(repo_type, repo_id)
        return self._unhandled(method, path)

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> int:
        repo = self._repo_for_read(repo_type, repo_id)
        commit = self.hub._resolve(repo, revision)
        siblings = []
        for path, stored in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path, "size": len(stored.content), "blobId": stored.git_oid}
            if stored.lfs:
                sibling["lfs"] = {
                    "size": len(stored.content), "sha256": stored.sha256, "pointerSize": stored.pointer_size
                }
            siblings.append(sibling)
        namespace = repo_id.split("/")[0] if "/" in repo_id else None
        return self._json(
            {
                "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
                "id": repo_id,
                "author": namespace,
                "sha": commit.sha,
                "lastModified": commit.date,
                "createdAt": repo.commits[repo.order[0]].date,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            },
            headers={"X-Repo-Commit": commit.sha},
        )

    @staticmethod
    def _file_entry(path: str, stored: StoredFile) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": stored.git_oid, "size": len(stored.content), "path": path}
        if stored.lfs:
            entry["lfs"] = {"oid": stored.sha256, "size": len(stored.content), "pointerSize": stored.pointer_size}
        return entry

    @staticmethod
    def _folder_entry(path: str, files: dict[str, StoredFile]) -> dict[str, Any]:
        prefix = path + "/"
        children = sorted((p, f.git_oid) for p, f in files.items() if p.startswith(prefix))
        oid = hashlib.sha1(json.dumps(children).encode()).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}

    @staticmethod
    def _folders(files: dict[str, StoredFile]) -> set[str]:
        folders = set()
        for path in files:
            parts = path.split("/")[:-1]
            folders.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return folders

    def _tree(self, repo_type: str, repo_id: str, revision: str, folder: str) -> int:
        repo = self._repo_for_read(repo_type, repo_id)
        commit = self.hub._resolve(repo, revision)
        files = commit.files
        folder = folder.strip("/")
        folders = self._folders(files)
        if folder and folder not in folders:
            # Clients rely on this code to tell "no such folder" from a missing repo/revision.
            raise HubHTTPError(
                404,
                f'{folder} does not exist on "{revision}"',
                code="EntryNotFound",
                extra={"headers": {"X-Repo-Commit": commit.sha}},
            )
        prefix = folder + "/" if folder else ""
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        entries = []
        for sub in sorted(folders):
            if sub.startswith(prefix) and (recursive or "/" not in sub[len(prefix):]):
                entries.append(self._folder_entry(sub, files))
        for path, stored in sorted(files.items()):
            if path.startswith(prefix) and (recursive or "/" not in path[len(prefix):]):
                entries.append(self._file_entry(path, stored))
        return self._json(entries, headers={"X-Repo-Commit": commit.sha})

    def _paths_info(self, repo_type: str, repo_id: str, revision: str) -> int:
        repo = self._repo_for_read(repo_type, repo_id)
        commit = self.hub._resolve(repo, revision)
        if "json" in self.headers.get("Content-Type", ""):
            paths = json.loads(self.body or b"{}").get("paths", [])
        else:
            paths = parse_qs(self.body.decode()).get("paths", [])
        folders = self._folders(commit.files)
        entries = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                entries.append(self._file_entry(path, commit.files[path]))
            elif path in folders:
                entries.append(self._folder_entry(path, commit.files))
        return self._json(entries, headers={"X-Repo-Commit": commit.sha})

    def _refs(self, repo_type: str, repo_id: str) -> int:
        repo = self._repo_for_read(repo_type, repo_id)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
            for name, sha in sorted(repo.branches.items())
            if not name.startswith("refs/")
        ]
        return self._json({"branches": branches, "tags": [], "converts": []})

    def _list_commits(self, repo_type: str, repo_id: str, revision: str) -> int:
        repo = self._repo_for_read(repo_type, repo_id)
        commit: Commit | None = self.hub._resolve(repo, revision)
        history = []
        while commit is not None:
            history.append(
                {
                    "id": commit.sha,
                    "title": commit.message,
                    "message": commit.description,
                    "authors": [{"user": commit.author, "avatar": None}],
                    "date": commit.date,
                }
            )
            commit = repo.commits.get(commit.parent) if commit.parent else None
        return self._json(history)

    def _create_branch(self, repo_type: str, repo_id: str, branch: str) -> int:
        repo, _ = self._repo_for_write(repo_type, repo_id)
        if branch in repo.branches:
            raise HubHTTPError(409, f"Reference already exists: refs/heads/{branch}")
        payload = json.loads(self.body or b"{}")
        repo.branches[branch] = self.hub._resolve(repo, payload.get("startingPoint") or "main").sha
        return self._json({})

    def _settings(self, repo_type: str, repo_id: str) -> int:
        repo, _ = self._repo_for_write(repo_type, repo_id)
        payload = json.loads(self.body or b"{}")
        if "visibility" in payload:
            repo.private = payload["visibility"] == "private"
        if "private" in payload:
            repo.private = bool(payload["private"])
        return self._json({"private": repo.private})

    # ------------------------------------------------------------------------------------------- uploads
    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> int:
        repo, _ = self._repo_for_write(repo_type, repo_id)
        head = self.hub._resolve(repo, revision) if revision in repo.branches else None
        current = head.files if head is not None else self.hub._resolve(repo, "main").files
        payload = json.loads(self.body or b"{}")
        lfs_patterns = _lfs_patterns(current)
        gitignore = payload.get("gitIgnore")
        if gitignore is None and ".gitignore" in current:
            gitignore = current[".gitignore"].content.decode("utf-8", "replace")
        ignore_patterns = _gitignore_patterns(gitignore)
        answers = []
        for item in payload.get("files", []):
            path = item["path"]
            sample = base64.b64decode(item.get("sample", ""))
            is_lfs = item.get("size", 0) >= LFS_SIZE_THRESHOLD or b"\0" in sample or _matches_any(path, lfs_patterns)
            existing = current.get(path)
            answers.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if is_lfs else "regular",
                    "shouldIgnore": _matches_any(path, ignore_patterns),
                    "oid": existing.upload_oid if existing is not None else None,
                }
            )
        return self._json({"files": answers, "commitOid": head.sha if head is not None else None})

    def _lfs_batch(self, path: str) -> int:
        repo_path = unquote(path.strip("/")[: -len(".git/info/lfs/objects/batch")])
        repo_type = "model"
        for candidate, prefix in _TYPE_PREFIX.items():
            if prefix and repo_path.startswith(prefix):
                repo_type, repo_path = candidate, repo_path[len(prefix):]
        repo, _ = self._repo_for_write(repo_type, repo_path)
        payload = json.loads(self.body or b"{}")
        if payload.get("operation") != "upload":
            raise HubHTTPError(422, "hub_server: only the 'upload' LFS operation is supported")
        if "basic" not in payload.get("transfers", ["basic"]):
            raise HubHTTPError(422, "hub_server: only the 'basic' LFS transfer is supported")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                objects.append({"oid": oid, "size": size, "error": {"code": 422, "message": "Invalid oid"}})
            elif oid in repo.lfs_objects:
                objects.append({"oid": oid, "size": size})  # already stored: no action, the client skips it
            else:
                upload_id = secrets.token_urlsafe(16)
                self.hub._pending_uploads[upload_id] = ((repo.repo_type, repo.repo_id), oid, size)
                objects.append(
                    {
                        "oid": oid,
                        "size": size,
                        "authenticated": True,
                        "actions": {
                            "upload": {"href": f"{self.hub.endpoint}/lfs-upload/{upload_id}", "header": {}},
                            "verify": {"href": f"{self.hub.endpoint}/lfs-verify/{upload_id}", "header": {}},
                        },
                    }
                )
        body = json.dumps({"transfer": "basic", "objects": objects}).encode()
        return self._send(200, body, content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, upload_id: str) -> int:
        # Like a presigned S3 URL: the one-time id is the credential, the client sends no token.
        pending = self.hub._pending_uploads.get(upload_id)
        if pending is None:
            raise HubHTTPError(403, "Unknown or expired upload URL")
        key, oid, size = pending
        if len(self.body) != size or hashlib.sha256(self.body).hexdigest() != oid:
            raise HubHTTPError(400, f"Uploaded content does not match oid {oid} / size {size}")
        repo = self.hub._repos.get(key)
        if repo is None:
            raise HubHTTPError(404, "Repository not found", code="RepoNotFound")
        repo.lfs_objects[oid] = self.body
        del self.hub._pending_uploads[upload_id]
        self.hub._completed_uploads[upload_id] = key
        return self._send(200, b"", headers={"ETag": f'"{hashlib.md5(self.body).hexdigest()}"'})

    def _lfs_verify(self, upload_id: str) -> int:
        payload = json.loads(self.body or b"{}")
        repo = self.hub._repos.get(self.hub._completed_uploads.get(upload_id, ("", "")))
        content = repo.lfs_objects.get(payload.get("oid")) if repo is not None else None
        if content is None or len(content) != payload.get("size"):
            raise HubHTTPError(404, f"LFS object {payload.get('oid')} not found")
        return self._json({"success": True})

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> int:
        repo, user = self._repo_for_write(repo_type, repo_id)
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubHTTPError(400, "The first line of a commit payload must be its header")
        header = lines[0]["value"]
        summary = (header.get("summary") or "").strip()
        if not summary:
            raise HubHTTPError(400, "Commit summary is required")
        branch = revision
        pr_url = None
        if self.query.get("create_pr") in ("1", "true"):
            repo.pr_count += 1
            branch = f"refs/pr/{repo.pr_count}"
            repo.branches[branch] = self.hub._resolve(repo, revision).sha
            pr_url = f"{self._repo_url(repo_type, repo_id)}/discussions/{repo.pr_count}"
        elif branch not in repo.branches:
            raise HubHTTPError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        head = repo.commits[repo.branches[branch]]
        parent = header.get("parentCommit")
        if parent and not head.sha.startswith(parent):
            # What clients (datasets.push_to_hub) treat as "someone committed in between: refresh and retry".
            raise HubHTTPError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = (value.get("path") or "").strip("/")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubHTTPError(400, f"Unsupported encoding {value.get('encoding')}")
                files[path] = StoredFile.make(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                content = repo.lfs_objects.get(value.get("oid"))
                if content is None:
                    raise HubHTTPError(422, f"LFS pointer for {path} points to an object that was not uploaded")
                files[path] = StoredFile.make(content, lfs=True)
            elif key == "deletedFile":
                if path not in files:
                    raise HubHTTPError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                doomed = [p for p in files if p.startswith(path + "/")]
                if not doomed:
                    raise HubHTTPError(404, f"A folder with this name doesn't exist: {path}", code="EntryNotFound")
                for p in doomed:
                    del files[p]
            else:
                raise HubHTTPError(400, f"Unknown commit operation key {key!r}")
        commit = self.hub._commit(repo, branch, files, summary, header.get("description") or "", user)
        return self._json(
            {
                "success": True,
                "commitOid": commit.sha,
                "commitUrl": f"{self._repo_url(repo_type, repo_id)}/commit/{commit.sha}",
                "hookOutput": "",
                "pullRequestUrl": pr_url,
            }
        )

    # ----------------------------------------------------------------------------------------- downloads
    def _resolve_file(self, segments: list[str], path: str) -> int:
        repo_type = "model"
        if segments[0] in _PLURAL_TO_TYPE and len(segments) >= 4 and segments[1] != "resolve":
            repo_type, segments = _PLURAL_TO_TYPE[segments[0]], segments[1:]
        if len(segments) >= 4 and segments[2] == "resolve":
            repo_id, rest = f"{segments[0]}/{segments[1]}", segments[3:]
        elif segments[1] == "resolve":
            repo_id, rest = segments[0], segments[2:]
        else:
            return self._unhandled(self.command, path)
        if len(rest) < 2:
            raise HubHTTPError(400, "Missing file path")
        repo = self._repo_for_read(repo_type, repo_id)
        commit = self.hub._resolve(repo, rest[0])
        filename = "/".join(rest[1:])
        stored = commit.files.get(filename)
        if stored is None:
            # X-Repo-Commit lets hf_hub_download cache the non-existence of the file.
            raise HubHTTPError(
                404, "Entry not found", code="EntryNotFound", extra={"headers": {"X-Repo-Commit": commit.sha}}
            )
        headers = {
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{stored.sha256 if stored.lfs else stored.git_oid}"',
            "Accept-Ranges": "bytes",
        }
        if stored.lfs:
            headers["X-Linked-Etag"] = f'"{stored.sha256}"'
            headers["X-Linked-Size"] = str(len(stored.content))
        content, status = stored.content, 200
        range_header = self.headers.get("Range")
        if range_header:
            match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", range_header)
            total = len(content)
            unsatisfiable = {"headers": {"Content-Range": f"bytes */{total}"}}
            if match is None or (not match.group(1) and not match.group(2)):
                raise HubHTTPError(416, f"Invalid range {range_header}", extra=unsatisfiable)
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), total - 1) if match.group(2) else total - 1
            else:
                start, end = max(total - int(match.group(2)), 0), total - 1
            if start >= total or start > end:
                raise HubHTTPError(416, "Range not satisfiable", extra=unsatisfiable)
            content, status = content[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        return self._send(status, content, content_type="application/octet-stream", headers=headers)
