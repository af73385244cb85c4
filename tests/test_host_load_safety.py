"""Loading runs no code (issue 13, section 6), and importing a plugin package imports no host library.

Each refusal test plants code that would write a marker file if it ever ran, and checks the marker
never appears.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simskip_core.api import SimSkip
from simskip_core.errors import CorruptModelError

PLUGINS = {
    "simskip_text": "sentence_transformers",
    "simskip_kg": "pykeen",
    "simskip_graph": "torch_geometric",
    "simskip_vision": "timm",
}


def _marker_code(marker: Path) -> str:
    """Python source that writes ``marker`` when it runs (import or unpickling)."""
    return f"open({str(marker)!r}, 'w').write('ran')\n"


# ------------------------------------------------------------------------------- package exports
@pytest.mark.parametrize(("package", "host"), sorted(PLUGINS.items()))
def test_importing_a_plugin_package_imports_no_host_library(package, host):
    code = f"import sys, {package}; print({host!r} in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("package", sorted(PLUGINS))
def test_every_exported_name_resolves(package):
    module = importlib.import_module(package)
    assert sorted(module.__all__) == dir(module)
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_structure_aware_simskip_is_exported_by_the_graph_package():
    from simskip_graph import StructureAwareSimSkip
    from simskip_graph.structure import StructureAwareSimSkip as defined

    assert StructureAwareSimSkip is defined


# ------------------------------------------------------------------------------- text
@pytest.fixture(scope="module")
def saved_text_model(tmp_path_factory):
    """A refined all-MiniLM-L6-v2 saved in the stage form (``model.save(path, portable=False)``), and the
    sentences it encodes: the tampering tests need a folder that ``load_refined_model`` must check."""
    from simskip_text import load_default_model, refine_model

    rng = np.random.default_rng(0)
    model = load_default_model()
    sentences = ["a quiet film", "loud and long", "the plot holds", "a fine cast", "dull", "bright work"]
    embeddings = model.encode(sentences * 6) + rng.normal(0, 0.01, (36, 384)).astype(np.float32)
    refined = refine_model(model, embeddings=embeddings, epochs=2, batch_size=8, progress=False, seed=0)
    path = tmp_path_factory.mktemp("text") / "refined"
    refined.save(str(path), portable=False)
    return path, refined, sentences


def _linked_copy(saved: Path, target: Path) -> Path:
    """A copy of ``saved`` whose JSON files are real copies and every other file a symlink."""
    target.mkdir()
    for source in saved.rglob("*"):
        destination = target / source.relative_to(saved)
        if source.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        elif source.suffix == ".json":
            shutil.copyfile(source, destination)
        else:
            destination.symlink_to(source)
    return target


def _add_module(folder: Path, kind: str) -> None:
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": "", "type": kind})
    (folder / "modules.json").write_text(json.dumps(modules))


def test_load_refined_model_gives_identical_embeddings(saved_text_model):
    from simskip_text import SimSkipStage, load_refined_model

    path, refined, sentences = saved_text_model
    reloaded = load_refined_model(path, device="cpu")
    assert isinstance(reloaded[-1], SimSkipStage)
    assert np.array_equal(reloaded.encode(sentences), refined.encode(sentences))


def test_load_refined_model_works_without_the_module_classes_seam(saved_text_model, monkeypatch):
    from sentence_transformers import SentenceTransformer
    from simskip_text import load_refined_model

    path, refined, sentences = saved_text_model
    monkeypatch.setattr(SentenceTransformer, "_load_with_module_classes", None, raising=False)
    assert np.array_equal(load_refined_model(path, device="cpu").encode(sentences), refined.encode(sentences))


def test_a_folder_naming_a_foreign_module_class_is_refused_and_runs_nothing(saved_text_model, tmp_path):
    from simskip_text import UnsafeModelError, load_refined_model

    folder = _linked_copy(saved_text_model[0], tmp_path / "tampered")
    marker = tmp_path / "marker"
    (folder / "evil.py").write_text(_marker_code(marker) + "class Module:\n    pass\n")
    _add_module(folder, "evil.Module")
    with pytest.raises(UnsafeModelError, match=r"'evil\.Module'"):
        load_refined_model(folder, device="cpu")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["transformers.AutoModel", "os.system", "sentence_transformers_x.Module"])
def test_a_module_class_outside_the_trusted_ones_is_refused(saved_text_model, tmp_path, kind):
    from simskip_text import UnsafeModelError, check_refined_folder

    folder = _linked_copy(saved_text_model[0], tmp_path / "tampered")
    _add_module(folder, kind)
    with pytest.raises(UnsafeModelError, match="neither sentence-transformers' own nor the SimSkip stage"):
        check_refined_folder(folder)


@pytest.mark.parametrize("name", ["simskip_text.module.py", "sub/helper.py", "cached.pyc"])
def test_a_folder_holding_python_files_is_refused(saved_text_model, tmp_path, name):
    from simskip_text import UnsafeModelError, load_refined_model

    folder = _linked_copy(saved_text_model[0], tmp_path / "tampered")
    marker = tmp_path / "marker"
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(_marker_code(marker))
    with pytest.raises(UnsafeModelError, match="Python file"):
        load_refined_model(folder, device="cpu")
    assert not marker.exists()


def test_a_config_with_an_auto_map_is_refused(saved_text_model, tmp_path):
    from simskip_text import UnsafeModelError, load_refined_model

    folder = _linked_copy(saved_text_model[0], tmp_path / "tampered")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafeModelError, match=r"config\.json has an auto_map"):
        load_refined_model(folder, device="cpu")


def test_trust_remote_code_is_refused_and_hub_ids_are_not_folders(saved_text_model, tmp_path):
    from simskip_text import load_refined_model

    with pytest.raises(ValueError, match="never runs code"):
        load_refined_model(saved_text_model[0], trust_remote_code=True)
    with pytest.raises(FileNotFoundError, match="snapshot_download"):
        load_refined_model(tmp_path / "sentence-transformers" / "all-MiniLM-L6-v2")


def test_unreadable_modules_json_is_a_corrupt_model(saved_text_model, tmp_path):
    from simskip_text import load_refined_model

    folder = _linked_copy(saved_text_model[0], tmp_path / "broken")
    (folder / "modules.json").write_text("[{")
    with pytest.raises(CorruptModelError, match=r"modules\.json is not valid JSON"):
        load_refined_model(folder)
    (folder / "modules.json").unlink()
    with pytest.raises(CorruptModelError, match=r"has no modules\.json"):
        load_refined_model(folder)


def test_the_stage_folder_stays_a_simskip_model(saved_text_model):
    path = saved_text_model[0]
    stage = json.loads((path / "modules.json").read_text())[-1]["path"]
    assert SimSkip.load(path / stage).dim_ == 384


# ------------------------------------------------------------------------------- kg
class _Marker:
    """Unpickling this writes ``path``: stands for a tampered pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "ran"))


@pytest.fixture
def pykeen_home(tmp_path, monkeypatch) -> Path:
    """PyKEEN's dataset cache root, moved to a temporary folder."""
    import pykeen.datasets.utils

    root = tmp_path / "pykeen-datasets"
    monkeypatch.setattr(pykeen.datasets.utils, "PYKEEN_DATASETS", root)
    return root


def test_a_tampered_pykeen_dataset_cache_is_never_read(pykeen_home, tmp_path):
    import torch
    from pykeen.datasets import get_dataset
    from simskip_kg.inputs import resolve_dataset

    get_dataset(dataset="nations")  # writes PyKEEN's cache
    (metadata,) = pykeen_home.glob("nations/cache/*/metadata.pth")
    marker = tmp_path / "marker"
    torch.save(_Marker(marker), metadata)
    get_dataset(dataset="nations")
    assert marker.exists()  # PyKEEN's own loader runs the planted code
    marker.unlink()
    assert resolve_dataset("nations").training.num_triples > 0
    assert not marker.exists()


@pytest.mark.parametrize("name", ["nations", "kinships", "umls"])
def test_shipped_datasets_are_pykeens_splits_and_write_no_cache(pykeen_home, name):
    from pykeen.datasets import get_dataset
    from simskip_kg import load_dataset

    ours = load_dataset(name)
    assert not pykeen_home.exists()
    theirs = get_dataset(dataset=name)
    for split in ("training", "testing", "validation"):
        mine, reference = getattr(ours, split), getattr(theirs, split)
        assert mine.entity_to_id == reference.entity_to_id and mine.relation_to_id == reference.relation_to_id
        assert torch_equal(mine.mapped_triples, reference.mapped_triples)


def torch_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))


def test_dataset_names_that_are_unknown_or_not_built_from_files_are_refused():
    from simskip_kg import KGInputError, load_dataset

    with pytest.raises(KGInputError, match="unknown PyKEEN dataset 'nope'"):
        load_dataset("nope")
    with pytest.raises(KGInputError, match="pass the Dataset instance"):
        load_dataset("ogbwikikg2")


# ------------------------------------------------------------------------------- no unpickling anywhere
def test_no_plugin_source_unpickles():
    import re

    pattern = re.compile(r"torch\.load\(|import pickle|pickle\.loads?\(|allow_pickle=True|weights_only=False")
    root = Path(__file__).resolve().parents[1] / "plugins"
    offenders = [
        f"{path.relative_to(root)}:{number}"
        for path in sorted(root.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
