"""What a model name means (``classify_model_source``) and the one-line hub errors of the loader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from da3_plugins.core.errors import HubError, UserInputError
from da3_plugins.core.model.loading import CheckpointError, resolve_source
from da3_plugins.core.model_source import (
    DEFAULT_MODEL,
    EMBEDDED,
    ModelNotFoundError,
    ModelSource,
    ModelSourceError,
    classify_model_source,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["depth-anything/DA3-BASE", "depth-anything/DA3NESTED-GIANT-LARGE-1.1",
                                  "me/my_model.v2", DEFAULT_MODEL])
def test_hub_ids(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing of that name here
    source = classify_model_source(name)
    assert source == ModelSource("hub", name)
    assert source.needs_network and not source.is_pickle


def test_embedded_never_needs_the_network(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / EMBEDDED).mkdir()  # the name wins over a folder of that name, as load_model always did
    source = classify_model_source("embedded")
    assert source == ModelSource("embedded", "embedded") and not source.needs_network


def test_folders_and_files(tmp_path, monkeypatch):
    folder = tmp_path / "DA3-BASE"
    folder.mkdir()
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"")
    assert classify_model_source(folder) == ModelSource("folder", str(folder))
    assert classify_model_source(str(weights)) == ModelSource("file", str(weights))
    assert not classify_model_source(folder).needs_network and not classify_model_source(weights).needs_network
    # an existing folder shaped like a hub id is that folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / "depth-anything" / "DA3-BASE").mkdir(parents=True)
    assert classify_model_source("depth-anything/DA3-BASE") == ModelSource("folder", "depth-anything/DA3-BASE")


def test_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    assert classify_model_source("~/models/tiny") == ModelSource("folder", str(tmp_path / "models" / "tiny"))
    with pytest.raises(ModelNotFoundError, match=r"^~/models/none: no such file or folder"):
        classify_model_source("~/models/none")


def test_pickles_are_files_the_loader_refuses(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    path.write_bytes(b"not even a pickle")
    source = classify_model_source(path)
    assert source.kind == "file" and source.is_pickle and not source.needs_network
    with pytest.raises(CheckpointError, match="pickled checkpoints are not loaded"):
        resolve_source(path, "da3-small")
    # a pickle name that does not exist is a missing file, never a hub id
    monkeypatch.chdir(tmp_path)
    for name in ("me/model.pth", "me/model.CKPT", "me/model.safetensors", "me/config.json"):
        with pytest.raises(ModelNotFoundError, match=f"^{name}: no such file or folder, and not a hub repo id"):
            classify_model_source(name)


@pytest.mark.parametrize("name", ["nonsense", "not a model", "a/b/c", "./DA3-BASE", "/nowhere/DA3-BASE",
                                  "../x/y", "owner/", "/repo", "-owner/repo", "owner/re po"])
def test_names_that_are_nothing(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as info:
        classify_model_source(name)
    assert isinstance(info.value, UserInputError) and isinstance(info.value, FileNotFoundError)
    assert str(info.value).startswith(f"{name}: no such file or folder, and not a hub repo id like")


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_names(name):
    with pytest.raises(ModelSourceError, match="^model: empty name; give a model folder") as info:
        classify_model_source(name)
    assert len(str(info.value).splitlines()) == 1


def test_a_path_like_name_that_does_not_exist_is_refused_by_load_model(tmp_path):
    from da3_plugins.core import load_model

    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_model(tmp_path / "nowhere" / "x.safetensors")


def test_pure_python():
    """The Blender extension vendors it: no torch or numpy, and it works as a plain module beside errors.py."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import model_source as m;"
            "assert m.classify_model_source('embedded').kind == 'embedded';"
            "bad = [x for x in ('torch', 'numpy', 'da3_plugins') if x in sys.modules]; print(bad); sys.exit(bool(bad))")
    res = subprocess.run([sys.executable, "-c", code, str(ROOT / "core")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# ----------------------------------------------------------------------------- hub failures: one line each


def _failing_hub(monkeypatch, exc: Exception):
    hub = pytest.importorskip("huggingface_hub")

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(hub, "hf_hub_download", fail)


@pytest.mark.parametrize("kind,advice", [
    ("RepositoryNotFoundError", "no such repo on the Hugging Face hub"),
    ("GatedRepoError", "gated on the Hugging Face hub"),
    ("RevisionNotFoundError", "has no revision 'v9'"),
    ("EntryNotFoundError", "has no config.json and model.safetensors: it is not a DA3 model repo"),
    ("LocalEntryNotFoundError", "not in the local hub cache and the Hugging Face hub cannot be reached (offline); "
                                "on a machine with access run: huggingface-cli download me/gone --local-dir"),
])
def test_hub_failures_are_one_line_hub_errors(monkeypatch, kind, advice):
    cls = getattr(pytest.importorskip("huggingface_hub.errors"), kind)
    exc = cls.__new__(cls)  # the HTTP errors want a response object: only the class and message matter here
    Exception.__init__(exc, "first line of the hub library\nsecond line\nthird\n\nfifth")
    _failing_hub(monkeypatch, exc)
    with pytest.raises(HubError) as info:
        resolve_source("me/gone", None, revision="v9")
    text = str(info.value)
    assert text.startswith("me/gone: ") and advice in text
    assert len(text.splitlines()) == 1 and "second line" not in text


def test_unknown_hub_failures_keep_only_their_first_line(monkeypatch):
    _failing_hub(monkeypatch, ConnectionError("connection refused\nTraceback noise"))
    with pytest.raises(HubError) as info:
        resolve_source("me/gone", None)
    text = str(info.value)
    assert "(ConnectionError: connection refused)" in text and "--model" not in text
    assert "huggingface-cli download me/gone --local-dir DA3_DIR" in text and "'embedded'" in text
    assert len(text.splitlines()) == 1


def test_missing_hub_library_is_a_hub_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(HubError, match=r'^me/gone: loading from the Hugging Face hub needs huggingface_hub: pip install "da3-plugins\[hub\]"'):
        resolve_source("me/gone", None)


def test_offline_for_real(monkeypatch, tmp_path):
    """The hub library's own offline mode (no network touched): one line with the download command."""
    hc = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path), raising=False)
    with pytest.raises(HubError) as info:
        resolve_source("depth-anything/DA3-SMALL", None)
    text = str(info.value)
    assert len(text.splitlines()) == 1 and "(offline)" in text
    assert "huggingface-cli download depth-anything/DA3-SMALL --local-dir" in text
