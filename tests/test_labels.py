"""`--tokenizer [LABEL=]SPEC`: labels that hold "=" (a study variant's name) and specs that hold "=" too."""

import pytest

from latentlab.errors import LatentlabError
from latentlab.extract import import_pixels, resolve_tokenizer, split_label


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("labels") / "pix"
    import_pixels("digits", path, name="pixels")
    return path


@pytest.mark.parametrize("label", ["ae", "vae@kl_weight=1e-06", "m@mask_ratio=0.5,aux=none", "a.b+c-d"])
def test_label_with_equals_signs_splits_before_the_path(store, label):
    assert split_label(f"{label}={store}") == (label, str(store))
    assert resolve_tokenizer(f"{label}={store}").name == label


def test_no_label(store):
    assert split_label(str(store)) == ("", str(store))
    assert split_label("python:mod:make:width=4") == ("", "python:mod:make:width=4")
    assert split_label("planted:modes=4,dim=8,n=100,seed=0") == ("", "planted:modes=4,dim=8,n=100,seed=0")
    assert split_label("x@k=1=python:mod:make:width=4") == ("x@k=1", "python:mod:make:width=4")


def test_a_missing_path_still_gets_its_one_line_error(tmp_path):
    with pytest.raises(LatentlabError, match="no latent store"):
        resolve_tokenizer(f"vae@kl_weight=1e-06={tmp_path / 'absent'}")
    assert split_label("ae=/absent/store") == ("ae", "/absent/store")
