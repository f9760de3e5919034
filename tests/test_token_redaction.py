"""No error or log line shows a Hub token, even when the error hf_idsel quotes carries one (issue 29.2).

hf_idsel quotes the first line of a Hub client's error in its own messages and logs, through `redact_token`. The
Hub's own error texts never carry the token, so the other push and load tests could not tell whether redaction ran
at all. A token with a stray line end (read from a file, pasted) does reach the quoted line: the HTTP client refuses
the header and quotes it, `Illegal header value b'Bearer <token>\\n'`. That real failure is used here, on each path
that quotes a client's error: a push (its retry log line and its final error), a manifest read from the Hub, and the
pool a manifest names."""

from __future__ import annotations

import logging
import secrets
import string

import datasets
import pytest

import hf_idsel
from hf_idsel.errors import InvalidArgumentError, PushError, redact_token
from hf_idsel.hub import push_selection


def real_shaped_token() -> str:
    """A token shaped like a Hub user access token: `hf_` and 34 letters and digits."""
    return "hf_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(34))


# A token of Hub shape, and one of another shape (an organisation's or a proxy's), each with the line end of a file.
TOKENS = {"hub-shaped": lambda: real_shaped_token() + "\n", "other": lambda: f"org-{secrets.token_hex(16)}\n"}


def secret_of(token: str) -> str:
    """What must never be shown: the token without its line end."""
    return token.strip()


@pytest.fixture
def selection(blob_pool):
    return hf_idsel.diverse_select(blob_pool, 20, k=3, embedding_column="embedding", seed=0, return_manifest=True)


def test_redact_token_hides_the_token_given_and_anything_shaped_like_one():
    given, other = "my-secret-token-1234", real_shaped_token()
    text = f"401 for token {given} (header Bearer {other}); retry with {given}"
    assert redact_token(text, given) == "401 for token *** (header Bearer hf_***); retry with ***"
    assert redact_token(text) == f"401 for token {given} (header Bearer hf_***); retry with {given}"
    assert redact_token(f"a token {other} in the text", None) == "a token hf_*** in the text"
    # A token given with a line end is found where an error quotes it without one, or escaped.
    assert redact_token(f"Illegal header value b'Bearer {given}\\n'", given + "\n") == "Illegal header value b'Bearer ***\\n'"
    # Text without a token is left as it is; so are words that merely start like one.
    assert redact_token("hf_idsel failed: HTTP 500", other) == "hf_idsel failed: HTTP 500"


@pytest.mark.parametrize("shape", list(TOKENS))
def test_a_push_error_that_quotes_the_token_never_shows_it(hub, selection, tmp_path, caplog, shape):
    subset, manifest = selection
    token = TOKENS[shape]()
    with caplog.at_level(logging.DEBUG, logger="hf_idsel"), pytest.raises(PushError) as info:
        push_selection(subset, hub.repo("echo"), manifest=manifest, local_dir=str(tmp_path / "s"), token=token, backoff=0.01)
    err = info.value
    assert err.pushed == [] and "Illegal header value" in str(err)  # the client's reason is quoted
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("hf_idsel")]
    assert ours and all(secret_of(token) not in text for text in [str(err), *ours])


@pytest.mark.parametrize("shape", list(TOKENS))
def test_a_hub_download_error_that_quotes_the_token_never_shows_it(hub, selection, blob_pool, tmp_path, caplog, shape):
    subset, manifest = selection
    repo = hub.repo("manifest")
    push_selection(subset, repo, manifest=manifest, local_dir=str(tmp_path / "stage"))
    token = TOKENS[shape]()
    with caplog.at_level(logging.DEBUG, logger="hf_idsel"), pytest.raises(InvalidArgumentError) as info:
        hf_idsel.load_selection(repo, blob_pool, token=token)
    assert "reading manifest.json" in str(info.value) and "Illegal header value" in str(info.value)
    assert secret_of(token) not in str(info.value) and secret_of(token) not in caplog.text
    # The same call with a good token loads the selection.
    assert hf_idsel.load_selection(repo, blob_pool, token=hub.token)["source_index"] == subset["source_index"]


@pytest.mark.parametrize("shape", list(TOKENS))
def test_the_recorded_pool_whose_download_error_quotes_the_token_never_shows_it(hub, selection, caplog, shape):
    subset, manifest = selection
    manifest.pool["source"] = {"path": hub.repo("pool")}  # as push_selection(..., pool_id=) records it
    token = TOKENS[shape]()
    with caplog.at_level(logging.DEBUG, logger="hf_idsel"), pytest.raises(InvalidArgumentError) as info:
        hf_idsel.load_selection(manifest.to_dict(), token=token)
    assert "Could not load the pool" in str(info.value) and "Illegal header value" in str(info.value)
    assert secret_of(token) not in str(info.value) and secret_of(token) not in caplog.text
