"""The portable export: a refined model that plain ``SentenceTransformer(path)`` reloads (no custom code)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import logging

import numpy as np
import pytest
import torch
from simskip_text import tasks as text_tasks
from simskip_text.export import portable_blocker, portable_modules, save_refined_model, to_portable
from simskip_text.load import STAGE_TYPE, load_refined_model
from simskip_text.module import RefinedSentenceTransformer, SimSkipStage, as_refined
from simskip_text.refine import refine_model

from simskip_core.refiner import SkipRefiner

pytestmark = pytest.mark.slow

SENTENCES = ["a quiet film", "loud and long", "the plot holds", "a fine cast", "dull", "bright work"]
#: Largest difference allowed between the Dense form and the SimSkip stage (float32 summation order).
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def model():
    return text_tasks._shipped_model()


@pytest.fixture(scope="module")
def refined(model):
    rng = np.random.default_rng(0)
    embeddings = model.encode(SENTENCES * 6) + rng.normal(0, 0.01, (36, 384)).astype(np.float32)
    return refine_model(model, embeddings=embeddings, epochs=2, batch_size=8, progress=False, seed=0)


def _trained_refiner(**kwargs) -> SkipRefiner:
    torch.manual_seed(0)
    refiner = SkipRefiner(16, hidden_dim=24, **kwargs)
    for parameter in refiner.g.parameters():  # the last layer starts at zero: give it real weights
        torch.nn.init.normal_(parameter, std=0.3)
    return refiner.eval()


def _apply(modules, x: torch.Tensor) -> torch.Tensor:
    features = {"sentence_embedding": x.clone()}
    for module in modules:
        features = module(features)
    return features["sentence_embedding"]


@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("normalize_output", [False, True])
def test_dense_form_computes_the_refiner(alpha, normalize_output):
    refiner = _trained_refiner(normalize_output=normalize_output, residual_scale=alpha)
    x = torch.randn(50, 16)
    with torch.no_grad():
        expected = refiner(x)
        got = _apply(portable_modules(refiner), x)
    assert (got - expected).abs().max().item() < TOLERANCE


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [({"activation": "gelu"}, "activation"), ({"norm": "layer"}, "norm"), ({"depth": 3}, "depth 3")],
)
def test_refiners_without_an_exact_dense_form_are_refused(kwargs, reason):
    refiner = _trained_refiner(**kwargs)
    assert reason in (portable_blocker(refiner) or "")
    with pytest.raises(ValueError, match="keep the SimSkip stage"):
        portable_modules(refiner)
    assert "not a SkipRefiner" in (portable_blocker(torch.nn.Identity()) or "")


def test_export_reloads_with_plain_sentence_transformer(refined, tmp_path):
    from sentence_transformers import SentenceTransformer

    stage_vectors = refined.encode(SENTENCES)
    folder = save_refined_model(refined, tmp_path / "portable")
    types = [entry["type"] for entry in json.loads((folder / "modules.json").read_text())]
    assert all(kind.startswith("sentence_transformers.") for kind in types), types
    reloaded = SentenceTransformer(str(folder), trust_remote_code=False)
    assert np.abs(reloaded.encode(SENTENCES) - stage_vectors).max() < TOLERANCE
    assert np.abs(to_portable(refined).encode(SENTENCES) - stage_vectors).max() < TOLERANCE
    assert isinstance(refined[-1], SimSkipStage)  # the in-memory model keeps its stage


def test_refined_model_card_names_the_refinement(model, refined, tmp_path):
    card = refined.model_card_data
    assert card.model_name and card.model_name != model.model_card_data.model_name
    assert card.model_name.startswith("simskip/all-MiniLM-L6-v2-simskip-")
    assert card.base_model == "sentence-transformers/all-MiniLM-L6-v2" and "simskip" in card.tags
    folder = save_refined_model(refined, tmp_path / "card")
    readme = (folder / "README.md").read_text()
    assert f"# {card.model_name}" in readme and "## SimSkip refinement" in readme
    assert "- simskip" in readme.split("\n---", 1)[0]
    reloaded = load_refined_model(folder)
    assert reloaded.model_card_data.model_name == card.model_name
    assert reloaded.model_card_data.base_model == card.base_model


def test_non_portable_map_keeps_the_stage_and_says_so(model, tmp_path, caplog):
    rng = np.random.default_rng(1)
    embeddings = model.encode(SENTENCES * 6) + rng.normal(0, 0.01, (36, 384)).astype(np.float32)
    gelu = refine_model(
        model, embeddings=embeddings, epochs=1, batch_size=8, progress=False, seed=0, activation="gelu"
    )
    with caplog.at_level(logging.WARNING, logger="simskip_text.export"):
        folder = save_refined_model(gelu, tmp_path / "gelu")
    assert "keeping the SimSkip stage" in caplog.text and "gelu" in caplog.text
    types = [entry["type"] for entry in json.loads((folder / "modules.json").read_text())]
    assert types[-1] == "simskip_text.module.SimSkipStage"
    assert np.array_equal(load_refined_model(folder).encode(SENTENCES), gelu.encode(SENTENCES))


def test_refined_save_writes_the_portable_form_by_default(refined, tmp_path):
    from sentence_transformers import SentenceTransformer

    assert isinstance(refined, RefinedSentenceTransformer)
    stage_vectors = refined.encode(SENTENCES)
    for name, save in (("save", refined.save), ("save_pretrained", refined.save_pretrained)):
        folder = tmp_path / name
        save(str(folder))
        types = [entry["type"] for entry in json.loads((folder / "modules.json").read_text())]
        assert all(kind.startswith("sentence_transformers.") for kind in types), types
        assert "## SimSkip refinement" in (folder / "README.md").read_text()
        reloaded = SentenceTransformer(str(folder), trust_remote_code=False)
        assert np.abs(reloaded.encode(SENTENCES) - stage_vectors).max() < TOLERANCE
    assert isinstance(refined[-1], SimSkipStage)  # saving leaves the in-memory stage in place


def test_refined_save_with_portable_false_keeps_the_stage(refined, tmp_path):
    folder = tmp_path / "stage"
    refined.save(str(folder), portable=False)
    types = [entry["type"] for entry in json.loads((folder / "modules.json").read_text())]
    assert types[-1] == STAGE_TYPE
    reloaded = load_refined_model(folder)
    assert np.array_equal(reloaded.encode(SENTENCES), refined.encode(SENTENCES))
    assert isinstance(reloaded, RefinedSentenceTransformer)  # so saving it again is portable too
    reloaded.save(str(tmp_path / "again"))
    again = json.loads((tmp_path / "again" / "modules.json").read_text())
    assert all(entry["type"].startswith("sentence_transformers.") for entry in again)


def test_a_subclass_of_the_users_own_is_left_alone():
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize

    class Custom(SentenceTransformer):
        """A user's own subclass."""

    custom = Custom(modules=[Normalize()])
    assert type(as_refined(custom)) is Custom
    assert type(as_refined(SentenceTransformer(modules=[Normalize()]))) is RefinedSentenceTransformer
