"""One way to save (issue 14): the graph and vision plugins write the core's model folder atomically,
read it back with the core's reader, still read the folders they wrote before, and refuse edited
configs with a CorruptModelError naming the key. Vision's ``create_kwargs`` accept only the keys
simskip writes (issue 13, section 6)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import simskip_core.serialization as serialization
from simskip_core.api import SimSkip
from simskip_core.errors import CorruptModelError
from simskip_core.serialization import read_model_dir

FAST = {"epochs": 2, "batch_size": 16, "progress": False, "seed": 0}


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


class _Marker:
    """Unpickling this writes ``path``: stands for a tampered pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "ran"))


# ------------------------------------------------------------------------------- graph
@pytest.fixture(scope="module")
def graph():
    """A fitted StructureAwareSimSkip on a small random graph, with the graph."""
    from simskip_graph import StructureAwareSimSkip

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    edges = np.stack([np.arange(40), (np.arange(40) + 1) % 40])
    edge_index = torch.from_numpy(np.concatenate([edges, edges[::-1]], axis=1))
    model = StructureAwareSimSkip(hops=1, alpha=0.1, post_hops=1, **FAST).fit(x, edge_index)
    return model, x, edge_index


def test_graph_model_saves_in_the_core_format_and_reloads_identically(graph, tmp_path):
    from simskip_graph import StructureAwareSimSkip

    model, x, edge_index = graph
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    config, _ = read_model_dir(tmp_path / "m")
    assert (config["format"], config["format_version"]) == ("simskip-structure-aware", 1)
    assert "version" not in config
    again = StructureAwareSimSkip.load(tmp_path / "m")
    assert again.config() == model.config()
    assert np.array_equal(again.transform(x, edge_index), model.transform(x, edge_index))
    model.save(tmp_path / "m", overwrite=True)


def test_graph_save_is_atomic(graph, tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(serialization, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        graph[0].save(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_graph_folder_of_the_previous_format_still_loads(graph, tmp_path):
    from simskip_graph import StructureAwareSimSkip

    model, x, edge_index = graph
    legacy = tmp_path / "legacy"
    model.model_.save(legacy / "refiner")
    settings = {"format": "simskip-graph-structure", "version": 1, **model.config()}
    (legacy / "graph.json").write_text(json.dumps(settings))
    again = StructureAwareSimSkip.load(legacy)
    assert np.array_equal(again.transform(x, edge_index), model.transform(x, edge_index))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"format": "simskip-model"}, "'simskip-structure-aware' expected"),
        ({"format_version": "2"}, "format_version must be an integer"),
        ({"format_version": 2}, "newer simskip"),
        ({"hops": None}, "hops=None"),
        ({"use_edges": "yes"}, "use_edges='yes'"),
        ({"simskip": None}, "no 'simskip' section"),
    ],
)
def test_edited_graph_configs_are_corrupt_models_naming_the_key(graph, tmp_path, changes, match):
    from simskip_graph import StructureAwareSimSkip

    graph[0].save(tmp_path / "m")
    _edit_config(tmp_path / "m", **changes)
    with pytest.raises(CorruptModelError, match=match):
        StructureAwareSimSkip.load(tmp_path / "m")


# ------------------------------------------------------------------------------- vision
@pytest.fixture(scope="module")
def backbone_model():
    """A tiny timm backbone wrapped with a SimSkip model fitted on random features of its width."""
    import timm
    from simskip_vision import RefinedBackbone

    torch.manual_seed(0)
    backbone = timm.create_model("test_efficientnet", pretrained=False, num_classes=0).eval()
    feats = np.random.default_rng(0).normal(size=(64, backbone.num_features)).astype(np.float32)
    return RefinedBackbone(backbone, SimSkip(**FAST).fit(feats))


def _outputs(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32))


def test_refined_backbone_saves_in_the_core_format(backbone_model, tmp_path):
    from simskip_vision import RefinedBackbone

    backbone_model.save(tmp_path / "m")
    config, tensors = read_model_dir(tmp_path / "m")
    assert (config["format"], config["format_version"]) == ("simskip-refined-backbone", 1)
    assert {k.split(".")[0] for k in tensors} == {"backbone", "simskip"}
    assert torch.equal(_outputs(RefinedBackbone.load(tmp_path / "m")), _outputs(backbone_model))
    backbone_model.save(tmp_path / "m", overwrite=True)


def test_refined_backbone_folder_of_the_previous_format_still_loads(backbone_model, tmp_path):
    from simskip_vision import RefinedBackbone

    legacy = tmp_path / "legacy"
    backbone_model.simskip.save(legacy / "refiner")
    state = {k: v.contiguous() for k, v in backbone_model.backbone.state_dict().items()}
    save_file(state, str(legacy / "backbone.safetensors"))
    config = {
        "format": "simskip-vision-refined-backbone",
        "format_version": 1,
        "model_name": "test_efficientnet",
        "create_kwargs": {"num_classes": 0},
        "data_config": {
            k: list(v) if isinstance(v, tuple) else v for k, v in backbone_model.data_config.items()
        },
    }
    (legacy / "config.json").write_text(json.dumps(config))
    assert torch.equal(_outputs(RefinedBackbone.load(legacy)), _outputs(backbone_model))


@pytest.mark.parametrize("key", ["checkpoint_path", "pretrained_cfg_overlay", "pretrained"])
def test_create_kwargs_outside_simskips_keys_are_refused_and_read_nothing(backbone_model, tmp_path, key):
    from simskip_vision import RefinedBackbone

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(_Marker(marker)))
    value = {"checkpoint_path": str(evil), "pretrained_cfg_overlay": {"file": str(evil)}, "pretrained": True}[
        key
    ]
    backbone_model.save(tmp_path / "m")
    _edit_config(tmp_path / "m", create_kwargs={"num_classes": 0, key: value})
    with pytest.raises(CorruptModelError, match=f"create_kwargs key '{key}' is not one simskip writes"):
        RefinedBackbone.load(tmp_path / "m")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"create_kwargs": {"num_classes": "0"}}, r"create_kwargs\['num_classes'\] = '0' has the wrong type"),
        ({"create_kwargs": ["num_classes"]}, "create_kwargs must be a mapping"),
        ({"format_version": None}, "format_version must be an integer"),
        ({"format": "simskip-model"}, "'simskip-refined-backbone' expected"),
        ({"data_config": None}, "no 'data_config' object"),
        ({"simskip": None}, "no 'simskip' section"),
    ],
)
def test_edited_backbone_configs_are_corrupt_models_naming_the_key(backbone_model, tmp_path, changes, match):
    from simskip_vision import RefinedBackbone

    backbone_model.save(tmp_path / "m")
    _edit_config(tmp_path / "m", **changes)
    with pytest.raises(CorruptModelError, match=match):
        RefinedBackbone.load(tmp_path / "m")


def test_refined_backbone_refuses_create_kwargs_it_could_not_reload(backbone_model):
    from simskip_vision import RefinedBackbone

    with pytest.raises(ValueError, match="create_kwargs key 'checkpoint_path'"):
        RefinedBackbone(
            backbone_model.backbone, backbone_model.simskip, create_kwargs={"checkpoint_path": "x"}
        )
