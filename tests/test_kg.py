"""KG plugin: extraction and exact write-back on real trained PyKEEN models (Nations), evaluation,
relation re-fit, bad-input errors, neighbour pairs, cached training, tasks and hooks."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from pykeen.datasets import EagerDataset, Kinships, Nations
from pykeen.evaluation import RankBasedEvaluator
from pykeen.models import ERModel, model_resolver
from pykeen.pipeline import PipelineResult
from pykeen.training import SLCWATrainingLoop
from pykeen.triples import TriplesFactory
from simskip_kg import tasks as kg_tasks
from simskip_kg.embeddings import (
    extract_entity_vectors,
    extract_relation_vectors,
    with_entity_vectors,
)
from simskip_kg.errors import (
    DatasetMismatchError,
    KGInputError,
    UnsupportedModelError,
    UntrainedModelError,
)
from simskip_kg.evaluation import bootstrap_difference, evaluate_link_prediction
from simskip_kg.inputs import resolve_input
from simskip_kg.pairs import neighbour_pairs
from simskip_kg.refine import refine_pykeen
from simskip_kg.refit import refit_relations
from simskip_kg.training import ModelSpec, load_or_train, train_model

from simskip_core.api import SimSkip
from simskip_core.plugins import all_tasks, get_plugin_manager
from simskip_core.tasks import LoadOptions, TaskData

pytestmark = pytest.mark.slow


def _small(model: str) -> ModelSpec:
    return ModelSpec("nations", model, epochs=10, embedding_dim=16, lr=0.05, num_negs_per_pos=4)


@pytest.fixture(scope="module")
def trained(nations) -> dict[str, ERModel]:
    """Small real models trained on Nations: TransE (real, normalised entities), ComplEx and RotatE (complex)."""
    return {name: train_model(_small(name), nations.training)[0] for name in ("transe", "complex", "rotate")}


def _filters(ds):
    return [ds.training.mapped_triples, ds.validation.mapped_triples]


def _pykeen_metrics(model, ds) -> dict[str, float]:
    result = RankBasedEvaluator(filtered=True, batch_size=256).evaluate(
        model,
        ds.testing.mapped_triples,
        additional_filter_triples=_filters(ds),
        batch_size=256,
        use_tqdm=False,
    )
    return {
        "mrr": float(result.get_metric("both.realistic.inverse_harmonic_mean_rank")),
        "hits@1": float(result.get_metric("both.realistic.hits_at_1")),
        "hits@10": float(result.get_metric("both.realistic.hits_at_10")),
    }


def _weights(model, kind="entity"):
    reps = model.entity_representations if kind == "entity" else model.relation_representations
    return [rep._embeddings.weight.detach().clone() for rep in reps]


# ------------------------------------------------------------------------------------------ write-back
@pytest.mark.parametrize("name", ["transe", "complex", "rotate"])
def test_writing_back_the_unrefined_vectors_reproduces_the_metrics_exactly(name, trained, nations) -> None:
    model = trained[name]
    before = _weights(model)
    x, _ = extract_entity_vectors(model)
    copy_ = with_entity_vectors(model, x)
    assert copy_ is not model
    # bit-exact storage, and PyKEEN's own evaluator gives the same numbers to the last digit
    for a, b in zip(_weights(copy_), before):
        assert torch.equal(a, b)
    assert _pykeen_metrics(copy_, nations) == _pykeen_metrics(model, nations)
    ours_before = evaluate_link_prediction(
        model, nations.testing.mapped_triples, filter_triples=_filters(nations)
    )
    ours_after = evaluate_link_prediction(
        copy_, nations.testing.mapped_triples, filter_triples=_filters(nations)
    )
    assert ours_after.metrics == ours_before.metrics
    for key in ours_before.items:
        assert np.array_equal(ours_after.items[key].values, ours_before.items[key].values)
    # the original model is untouched
    for a, b in zip(_weights(model), before):
        assert torch.equal(a, b)


def test_complex_embeddings_are_extracted_as_real_pairs(trained, nations) -> None:
    model = trained["complex"]
    x, layout = extract_entity_vectors(model)
    assert layout.is_complex and x.shape == (nations.num_entities, 32) and x.dtype == np.float32
    complex_rows = model.entity_representations[0](indices=torch.arange(nations.num_entities)).detach()
    assert complex_rows.is_complex() and complex_rows.shape == (nations.num_entities, 16)
    assert np.array_equal(x[:, 0::2], complex_rows.real.numpy())
    assert np.array_equal(x[:, 1::2], complex_rows.imag.numpy())
    rel, rel_layout = extract_relation_vectors(model)
    assert rel.shape == (nations.num_relations, 32) and rel_layout.kind == "relation"


def test_write_back_changes_scores_applies_the_constrainer_and_survives_a_reset(trained, nations) -> None:
    model = trained["transe"]
    x, _ = extract_entity_vectors(model)
    rng = np.random.default_rng(0)
    moved = (x + rng.normal(scale=0.5, size=x.shape)).astype(np.float32) * 3.0
    new = with_entity_vectors(model, moved)
    written = _weights(new)[0].numpy()
    # TransE normalises entity rows after every training step: written rows satisfy that constraint
    assert np.allclose(np.linalg.norm(written, axis=1), 1.0, atol=1e-5)
    assert np.allclose(written, moved / np.linalg.norm(moved, axis=1, keepdims=True), atol=1e-6)
    assert _pykeen_metrics(new, nations) != _pykeen_metrics(model, nations)
    # PyKEEN's training loop resets parameters when it starts fresh: written rows are the new init
    new.reset_parameters_()
    assert np.allclose(_weights(new)[0].numpy(), written, atol=1e-6)
    # without the constrainer the rows are written as given (ComplEx has none)
    cx, _ = extract_entity_vectors(trained["complex"])
    shifted = cx * 2.0
    assert np.array_equal(_weights(with_entity_vectors(trained["complex"], shifted))[0].numpy(), shifted)


def test_write_back_rejects_wrong_shapes_and_non_finite_vectors(trained) -> None:
    x, _ = extract_entity_vectors(trained["transe"])
    with pytest.raises(KGInputError, match=r"shape \(14, 16\)"):
        with_entity_vectors(trained["transe"], x[:, :8])
    bad = x.copy()
    bad[3, 0] = np.nan
    with pytest.raises(KGInputError, match=r"NaN or Inf .* rows \[3\]"):
        with_entity_vectors(trained["transe"], bad)


# ------------------------------------------------------------------------------------------ evaluation
def test_per_triple_scores_reproduce_pykeens_metrics(trained, nations) -> None:
    model = trained["rotate"]
    result = evaluate_link_prediction(model, nations.testing.mapped_triples, filter_triples=_filters(nations))
    pykeen = _pykeen_metrics(model, nations)
    n_test = nations.testing.num_triples
    for key in ("mrr", "hits@1", "hits@10"):
        assert result.items[key].values.shape == (n_test,)
        assert math.isclose(result.metrics[key], pykeen[key], rel_tol=1e-6)
    # hits are per-triple averages of the head-side and tail-side indicators
    assert set(np.unique(result.items["hits@10"].values)) <= {0.0, 0.5, 1.0}
    same = bootstrap_difference(result.items["mrr"], result.items["mrr"], n_boot=200)
    assert same == (0.0, 0.0, 0.0)
    other = evaluate_link_prediction(
        trained["complex"], nations.testing.mapped_triples, filter_triples=_filters(nations)
    )
    diff, low, high = bootstrap_difference(other.items["mrr"], result.items["mrr"], n_boot=500)
    assert math.isclose(diff, other.metrics["mrr"] - result.metrics["mrr"], rel_tol=1e-9, abs_tol=1e-12)
    assert low < diff < high


# ------------------------------------------------------------------------------------------ re-fit
def test_relation_refit_trains_only_relations_and_restores_the_model(trained, nations) -> None:
    model = trained["transe"]
    entities, relations = _weights(model), _weights(model, "relation")
    constrainer = model.entity_representations[0].constrainer
    first = refit_relations(model, nations.training, epochs=2, seed=3)
    again = refit_relations(model, nations.training, epochs=2, seed=3)
    assert len(first.losses) == 2
    for a, b in zip(_weights(first.model), entities):
        assert torch.equal(a, b)  # entities frozen, and the constrainer did not rewrite them
    assert not torch.equal(_weights(first.model, "relation")[0], relations[0])
    assert torch.equal(_weights(first.model, "relation")[0], _weights(again.model, "relation")[0])  # seeded
    refitted = first.model
    assert all(p.requires_grad for p in refitted.parameters())
    assert refitted.entity_representations[0].constrainer is constrainer
    assert "reset_parameters_" not in vars(refitted)
    for a, b in zip(_weights(model, "relation"), relations):
        assert torch.equal(a, b)  # the input model is untouched
    with pytest.raises(KGInputError, match="epochs must be >= 1"):
        refit_relations(model, nations.training, epochs=0)
    with pytest.raises(KGInputError, match="unknown training loop 'sgd-loop'"):
        refit_relations(model, nations.training, training_loop="sgd-loop")


def test_relation_refit_continues_the_objective_of_a_given_training_loop(trained, nations) -> None:
    loop = SLCWATrainingLoop(
        model=trained["rotate"],
        triples_factory=nations.training,
        optimizer="sgd",
        optimizer_kwargs={"lr": 0.3},
        negative_sampler_kwargs={"num_negs_per_pos": 2},
    )
    result = refit_relations(trained["rotate"], nations.training, epochs=1, training_loop=loop)
    assert result.config["training_loop"] == "SLCWATrainingLoop" and result.config["optimizer"] == "SGD"
    assert result.config["lr"] == 0.3 and result.config["negative_sampler_kwargs"] == {"num_negs_per_pos": 2}
    # RotatE's relation constrainer (unit modulus) still applies to the re-fitted relations
    relations = result.model.relation_representations[0](indices=None).detach()
    assert torch.allclose(relations.abs(), torch.ones_like(relations.abs()), atol=1e-5)
    assert (
        refit_relations(trained["rotate"], nations.training, epochs=1, lr=0.05, training_loop=loop).config[
            "lr"
        ]
        == 0.05
    )


# ------------------------------------------------------------------------------------------ bad input
def _permuted(ds: Nations) -> EagerDataset:
    """Nations with the entity ids permuted: same sizes, but id i means another country."""
    labels = sorted(ds.training.entity_to_id)
    permuted = {label: (i + 5) % len(labels) for i, label in enumerate(labels)}
    factories = [
        TriplesFactory.from_labeled_triples(
            f.triples, entity_to_id=permuted, relation_to_id=ds.training.relation_to_id
        )
        for f in (ds.training, ds.testing, ds.validation)
    ]
    return EagerDataset(*factories)


def _result(model, training, losses=(1.0, 0.5)) -> PipelineResult:
    return PipelineResult(
        random_seed=0,
        model=model,
        training=training,
        training_loop=None,
        losses=list(losses),
        metric_results=None,
        train_seconds=0.0,
        evaluate_seconds=0.0,
    )


def test_a_model_from_another_dataset_is_refused(trained, nations) -> None:
    kinships = Kinships()
    with pytest.raises(DatasetMismatchError, match=r"mismatched entity counts: .* 14 entities .* 104"):
        resolve_input(trained["transe"], kinships)
    permuted = _permuted(nations)
    # a PipelineResult knows its training factory: the id mappings are compared
    with pytest.raises(DatasetMismatchError, match="map to other ids"):
        resolve_input(_result(trained["transe"], nations.training), permuted)
    # a bare model does not: it ranks the other dataset's training triples at chance
    with pytest.raises(UntrainedModelError, match="trained on other triples"):
        resolve_input(trained["transe"], permuted)
    assert resolve_input(trained["transe"], nations).training is nations.training


def test_untrained_and_nan_models_are_refused(trained, nations) -> None:
    fresh = model_resolver.make("transe", triples_factory=nations.training, embedding_dim=16, random_seed=0)
    with pytest.raises(UntrainedModelError, match="no better than chance"):
        resolve_input(fresh, nations)
    assert resolve_input(fresh, nations, check=False).model is fresh
    with pytest.raises(UntrainedModelError, match="no training losses"):
        resolve_input(_result(trained["transe"], nations.training, losses=()), nations)
    broken = copy.deepcopy(trained["transe"])
    with torch.no_grad():
        broken.entity_representations[0]._embeddings.weight[2, 1] = float("nan")
    with pytest.raises(
        KGInputError, match=r"NaN or Inf in 1 row\(s\), first at rows \[2\]; training diverged"
    ):
        resolve_input(broken, nations)
    with pytest.raises(KGInputError, match="pass dataset="):
        resolve_input(trained["transe"])


def test_models_without_an_embedding_table_are_refused(nations) -> None:
    lowrank = ERModel(
        triples_factory=nations.training,
        interaction="distmult",
        entity_representations="lowrank",
        entity_representations_kwargs={"shape": 8, "num_bases": 3},
        relation_representations_kwargs={"shape": 8},
    )
    with pytest.raises(
        UnsupportedModelError, match=r"LowRankRepresentation, not a plain pykeen\.nn\.Embedding"
    ):
        extract_entity_vectors(lowrank)
    with pytest.raises(
        UnsupportedModelError, match="expected a pykeen PipelineResult or a trained pykeen model"
    ):
        resolve_input(torch.nn.Linear(2, 2), nations)


# ------------------------------------------------------------------------------------------ pairs
def test_neighbour_pairs_are_entities_sharing_a_triple() -> None:
    triples = np.array([[0, 0, 1], [1, 1, 0], [0, 2, 1], [2, 0, 3], [3, 0, 3], [0, 1, 4]])
    pairs = neighbour_pairs(triples, 5)
    assert pairs.tolist() == [[0, 1], [0, 4], [2, 3]]  # symmetric duplicates merged, self-loop dropped
    # top_k=1 keeps each entity's most shared neighbour: 0-1 (3 triples) for 0 and 1, 2-3, and 0-4 for 4
    assert neighbour_pairs(triples, 5, top_k=1).tolist() == [[0, 1], [0, 4], [2, 3]]
    busy = np.array([[0, 0, 1], [0, 1, 1], [0, 0, 2], [0, 0, 3], [0, 1, 3], [3, 0, 4], [3, 1, 4], [4, 0, 3]])
    # counts: 0-1: 2, 0-2: 1, 0-3: 2, 3-4: 3. 0 keeps 0-1 (tie with 0-3, first wins), 2 keeps 0-2 (its only
    # neighbour), 3 keeps 3-4: so 0-3 is dropped although it shares more triples than 0-2
    assert neighbour_pairs(busy, 5).tolist() == [[0, 1], [0, 2], [0, 3], [3, 4]]
    assert neighbour_pairs(busy, 5, top_k=1).tolist() == [[0, 1], [0, 2], [3, 4]]
    with pytest.raises(ValueError, match="outside"):
        neighbour_pairs(np.array([[0, 0, 7]]), 5)


# ------------------------------------------------------------------------------------------ one call
def test_refine_pykeen_returns_a_refined_copy_and_a_fair_table(trained, nations) -> None:
    model = trained["transe"]
    before = _weights(model)
    new, table = refine_pykeen(
        _result(model, nations.training), nations, epochs=5, refit_epochs=2, progress=False, n_boot=200
    )
    assert list(table.index) == ["raw", "raw + relation re-fit", "refined", "refined + relation re-fit"]
    raw = evaluate_link_prediction(model, nations.testing.mapped_triples, filter_triples=_filters(nations))
    assert table.loc["raw", "mrr"] == raw.metrics["mrr"]
    assert table.loc["refined + relation re-fit", "reference"] == "raw + relation re-fit"
    row = table.loc["refined"]
    assert math.isclose(row["mrr_delta"], row["mrr"] - table.loc["raw", "mrr"], abs_tol=1e-12)
    assert row["mrr_delta_low"] <= row["mrr_delta"] <= row["mrr_delta_high"]
    assert new is not model and isinstance(table.attrs["simskip"], SimSkip)
    new_entities = _weights(new)[0]
    assert not torch.equal(new_entities, before[0])
    assert np.allclose(np.linalg.norm(new_entities.numpy(), axis=1), 1.0, atol=1e-5)  # TransE's constraint
    for a, b in zip(_weights(model), before):
        assert torch.equal(a, b)
    # without re-fit and evaluation: just the refined copy; auto mode uses the validation-MRR probe
    only, none = refine_pykeen(
        model, nations, refit=False, evaluate=False, epochs=3, mode="auto", progress=False
    )
    assert none is None and isinstance(only, ERModel)


# ------------------------------------------------------------------------------------------ cache, tasks, hooks
def test_trained_models_are_cached_as_safetensors(nations, tmp_path) -> None:
    spec = ModelSpec("nations", "distmult", epochs=2, embedding_dim=8)
    first, info = load_or_train(spec, nations.training, cache_dir=tmp_path)
    files = list((tmp_path / "kg-models").glob("*.safetensors"))
    assert not info["cached"] and [f.name for f in files] == [spec.filename()]
    assert spec.filename().startswith("nations-distmult-s0-e2-")
    second, info2 = load_or_train(spec, nations.training, cache_dir=tmp_path)
    assert info2["cached"] and info2["losses"] == info["losses"]
    for a, b in zip(_weights(first), _weights(second)):
        assert torch.equal(a, b)
    files[0].write_bytes(b"not a safetensors file")
    third, info3 = load_or_train(spec, nations.training, cache_dir=tmp_path)
    assert not info3["cached"]  # a corrupt entry is retrained (same seed, same model)
    for a, b in zip(_weights(first), _weights(third)):
        assert torch.equal(a, b)
    assert ModelSpec("nations", "distmult", epochs=3, embedding_dim=8).key() != spec.key()


def test_kg_task_loads_evaluates_and_runs_the_refit_methods(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(kg_tasks.TRAIN_EPOCHS, "quick", 10)
    monkeypatch.setitem(kg_tasks.REFIT_EPOCHS, "quick", 2)
    tasks = all_tasks()
    assert {f"kg/{d}-{m}" for d in ("nations", "kinships", "umls") for m in ("transe", "distmult")} <= set(
        tasks
    )
    assert tasks["kg/nations-transe"].quick and not tasks["kg/kinships-transe"].quick
    task = tasks["kg/nations-distmult"]
    data = task.load(LoadOptions(quick=True, cache_dir=tmp_path, progress=False))
    assert isinstance(data, TaskData) and data.train.vectors.shape == (14, 64)
    assert data.train.ids[0] == data.context["dataset"].training.entity_to_id.__iter__().__next__()
    x = data.test.vectors
    result = task.evaluate(data, x, x, 0, {})
    assert result.metrics["mrr"] == pytest.approx(
        _pykeen_metrics(data.context["model"], data.context["dataset"])["mrr"]
    )
    pairs = task.pair_signals(data)
    assert pairs["kg_neighbours"].shape[1] == 2 and len(pairs["kg_neighbours"]) > 0
    probe = task.default_probe(data)
    assert probe.uses_labels is False and probe(x, 0) == probe(x, 0) and probe(x, 0) != probe(x, 1)
    methods = {m.name: m for m in task.methods}
    out = methods["identity+relation-refit"].run(task, data, 0, {})
    assert np.array_equal(out.test, x)  # raw entities...
    refit = task.evaluate(data, out.train, out.test, 0, out.extras)
    assert refit.metrics != result.metrics  # ...evaluated with their re-fitted relations
    assert task.evaluate(data, x, x.copy(), 0, {}).metrics == result.metrics
    short = dataclasses.replace(task, defaults={**task.defaults, "epochs": 5})  # keep the test quick
    refined = methods["simskip-ntxent+relation-refit"].run(short, data, 0, {})
    assert refined.test.shape == x.shape and not np.array_equal(refined.test, x)
    assert refined.info["refit_epochs"] == 2 and refined.info["entities"] == "simskip-ntxent"
    with_refit = task.evaluate(data, refined.train, refined.test, 0, refined.extras)
    without = task.evaluate(data, refined.train, refined.test, 0, {})
    assert with_refit.metrics != without.metrics


def test_extract_and_attach_hooks_handle_pykeen_models_only(trained, nations) -> None:
    hook = get_plugin_manager().hook
    assert hook.simskip_extract_embeddings(source=np.zeros((2, 2)), options={}) is None
    assert hook.simskip_attach(host=object(), model=None) is None
    es = hook.simskip_extract_embeddings(source=_result(trained["complex"], nations.training), options={})
    assert es.vectors.shape == (14, 32) and es.ids[nations.training.entity_to_id["usa"]] == "usa"
    assert "kg_neighbours" in es.pairs
    refiner = SimSkip(epochs=2, batch_size=8, progress=False).fit(es.vectors)
    attached = hook.simskip_attach(host=trained["complex"], model=refiner)
    assert np.allclose(extract_entity_vectors(attached)[0], refiner.transform(es.vectors))
    with pytest.raises(DatasetMismatchError):
        hook.simskip_extract_embeddings(source=trained["complex"], options={"dataset": "kinships"})
