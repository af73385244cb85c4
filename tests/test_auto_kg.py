"""KG auto mode: the vectors SimSkip returns are exactly the ones the validation probe scored (the
candidates include the model's row normalisation), and the relation re-fit variants are candidates
scored as they are returned."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from simskip_kg import tasks as kg_tasks
from simskip_kg.embeddings import (
    entity_rows_normalised,
    extract_entity_vectors,
    with_entity_vectors,
)
from simskip_kg.probe import ValidationMRRProbe
from simskip_kg.refine import refine_pykeen
from simskip_kg.training import ModelSpec, train_model

from simskip_core.api import RowNormalized, SimSkip
from simskip_core.plugins import all_tasks
from simskip_core.tasks import LoadOptions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def transe(nations):
    spec = ModelSpec("nations", "transe", epochs=10, embedding_dim=16, lr=0.05, num_negs_per_pos=4)
    return train_model(spec, nations.training)[0]


def test_returned_entity_vectors_are_exactly_the_scored_ones(transe, nations) -> None:
    scored: list[np.ndarray] = []

    class Recording(ValidationMRRProbe):
        def __call__(self, z: np.ndarray, split_seed: int) -> float:
            scored.append(z)
            return super().__call__(z, split_seed)

    probe = Recording(transe, nations.training, nations.validation)
    assert probe.row_normalize and entity_rows_normalised(transe)
    x, _ = extract_entity_vectors(transe)
    model = SimSkip(epochs=3, batch_size=8, mode="auto", progress=False).fit(x, probe=probe)
    assert isinstance(model.module_, RowNormalized)
    for z in scored:  # every candidate was scored as a model with unit entity rows keeps it
        np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    out = model.transform(x)
    chosen = model.selection_["candidates"][model.chosen]["scores"]
    assert [probe(out, s) for s in range(model.n_splits)] == chosen
    written = with_entity_vectors(transe, out)  # PyKEEN's constrainer leaves the rows as returned
    assert torch.equal(written.entity_representations[0]._embeddings.weight, torch.from_numpy(out))


def test_refine_pykeen_auto_returns_the_scored_variant(transe, nations) -> None:
    model, table = refine_pykeen(
        transe, nations, mode="auto", epochs=3, refit_epochs=2, progress=False, n_boot=200
    )
    selection = table.attrs["selection"]
    assert set(selection["candidates"]) == {
        "raw",
        "refined",
        "raw + relation re-fit",
        "refined + relation re-fit",
    }
    probe = ValidationMRRProbe(transe, nations.training, nations.validation)
    scores = [probe.score_model(model, s) for s in range(selection["n_splits"])]
    assert scores == selection["candidates"][selection["chosen"]]["scores"]


def test_kg_task_auto_refit_row_selects_among_the_variants(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(kg_tasks.TRAIN_EPOCHS, "quick", 10)
    monkeypatch.setitem(kg_tasks.REFIT_EPOCHS, "quick", 2)
    task = all_tasks()["kg/nations-transe"]
    task = dataclasses.replace(task, defaults={**task.defaults, "epochs": 3})
    data = task.load(LoadOptions(quick=True, cache_dir=tmp_path, progress=False))
    method = next(m for m in task.methods if m.name == "simskip-auto+relation-refit")
    assert method.family == "simskip" and not method.uses_labels
    out = method.run(task, data, 0, {})
    assert out.info["chosen"] in out.info["candidate_means"] and out.info["uses_labels"] is False
    result = task.evaluate(data, out.train, out.test, 0, out.extras)
    assert 0.0 < result.metrics["mrr"] <= 1.0
