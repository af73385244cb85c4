"""The graph plugin: graph ops, encoders, structure-aware SimSkip, the PyG transform, tasks and hooks."""

from __future__ import annotations

import itertools

import numpy as np
import pluggy
import pytest
import torch
from simskip_graph import encoders, ops, plugin
from simskip_graph.structure import StructureAwareSimSkip
from simskip_graph.tasks import build_task_data, evaluate, graph_methods, graph_tasks, stratified_split
from simskip_graph.transform import RefineNodes
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform, Compose

from simskip_core.api import SimSkip
from simskip_core.embeddings import EmbeddingSet
from simskip_core.errors import CorruptModelError
from simskip_core.evaluation import classification_eval
from simskip_core.hooks import hookimpl
from simskip_core.tasks import LoadOptions


@pytest.fixture(autouse=True)
def one_thread():
    """Graphs here are tiny: one thread avoids OpenMP spin-waiting on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def planted_partition(
    n_per: int = 50,
    classes: int = 3,
    p_in: float = 0.2,
    p_out: float = 0.01,
    noise: float = 3.0,
    seed: int = 0,
):
    """A stochastic block model whose node features are the class centre plus heavy noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per)
    n = len(y)
    prob = np.where(y[:, None] == y[None, :], p_in, p_out)
    upper = np.triu(rng.random((n, n)) < prob, k=1)
    src, dst = np.nonzero(upper)
    edge_index = torch.as_tensor(
        np.stack([np.concatenate([src, dst]), np.concatenate([dst, src])]), dtype=torch.long
    )
    centres = rng.normal(size=(classes, 16))
    x = (centres[y] + noise * rng.normal(size=(n, 16))).astype(np.float32)
    return Data(x=torch.from_numpy(x), edge_index=edge_index, y=torch.as_tensor(y), num_nodes=n)


def two_cliques() -> Data:
    """Two 6-cliques joined by one edge (nodes 0-5 and 6-11)."""
    edges = [(i, j) for c in (range(6), range(6, 12)) for i in c for j in c if i < j] + [(5, 6)]
    ei = torch.tensor(edges).T
    return Data(
        edge_index=torch.cat([ei, ei.flip(0)], dim=1), y=torch.tensor([0] * 6 + [1] * 6), num_nodes=12
    )


# ---------------------------------------------------------------------------------------------- ops


def test_edge_index_checks():
    with pytest.raises(ValueError, match=r"outside \[0, 3\), first edge 1: \(2, 3\)"):
        ops.check_edge_index(np.array([[0, 2], [1, 3]]), 3)
    with pytest.raises(ValueError, match="outside"):
        ops.check_edge_index(np.array([[0, -1], [1, 2]]), 3)
    with pytest.raises(ValueError, match=r"transpose it"):
        ops.check_edge_index(np.zeros((5, 2), dtype=int), 3)
    with pytest.raises(TypeError, match="integer"):
        ops.check_edge_index(np.zeros((2, 2)), 3)
    with pytest.raises(ValueError, match="3 rows but the graph has 4 nodes"):
        ops.neighbour_average(np.ones((3, 2), np.float32), np.array([[0], [1]]), num_nodes=4)


def test_neighbour_average_propagation_and_pairs_by_hand():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [5.0, 5.0]], np.float32)
    ei = np.array([[0, 1, 1, 0], [1, 2, 0, 1]])  # 0-1, 1-2 (duplicate 0-1), node 3 isolated
    avg = ops.neighbour_average(x, ei)
    np.testing.assert_allclose(avg, [[1, 1], [1.5, 2], [2, 3], [5, 5]])
    assert ops.edge_pairs(ei, 4).tolist() == [[0, 1], [1, 2]]
    np.testing.assert_array_equal(ops.propagate(x, ei, hops=0), x)
    a = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]], float)
    s = a / np.sqrt(a.sum(1))[:, None] / np.sqrt(a.sum(0))[None, :]
    np.testing.assert_allclose(ops.propagate(x, ei, hops=2), s @ s @ x, rtol=1e-5)
    appnp = ops.propagate(x, ei, hops=1, alpha=0.25)
    np.testing.assert_allclose(appnp, 0.75 * s @ x + 0.25 * x, rtol=1e-5)


def test_spectral_embedding_separates_cliques_and_is_deterministic():
    g = two_cliques()
    emb = ops.spectral_embedding(g.edge_index, 12, dim=2)
    assert emb.shape == (12, 2)
    first = emb[:, 0]
    assert np.sign(first[:6]).tolist() == [np.sign(first[0])] * 6
    assert np.sign(first[6:]).tolist() == [-np.sign(first[0])] * 6
    np.testing.assert_array_equal(emb, ops.spectral_embedding(g.edge_index, 12, dim=2))


# ---------------------------------------------------------------------------------------------- encoders


def test_random_walks_follow_edges():
    g = two_cliques()
    walks = encoders.uniform_random_walks(g.edge_index, 12, np.arange(12), 8, np.random.default_rng(0))
    adj = ops.adjacency(g.edge_index, 12).toarray()
    assert walks.shape == (12, 8) and walks[:, 0].tolist() == list(range(12))
    assert all(adj[a, b] for w in walks for a, b in itertools.pairwise(w))


def test_skipgram_and_dgi_embed_community_structure():
    g = planted_partition(n_per=30, p_in=0.3, p_out=0.01)
    y = g.y.numpy()
    tr, te = stratified_split(y, 0.5, 0)
    sg = encoders.random_walk_skipgram(g.edge_index, g.num_nodes, dim=16, epochs=15, seed=0)
    assert sg.shape == (90, 16)
    np.testing.assert_array_equal(
        sg, encoders.random_walk_skipgram(g.edge_index, g.num_nodes, dim=16, epochs=15, seed=0)
    )
    assert classification_eval(sg[tr], y[tr], sg[te], y[te]).metrics["knn5_acc"] > 0.8
    featureless = Data(edge_index=g.edge_index, num_nodes=g.num_nodes)
    dgi = encoders.deep_graph_infomax(featureless, dim=16, epochs=60, seed=0)
    assert dgi.shape == (90, 16) and np.isfinite(dgi).all()
    assert classification_eval(dgi[tr], y[tr], dgi[te], y[te]).metrics["probe_acc"] > 0.8


def test_supervised_gcn_uses_only_given_labels():
    g = planted_partition(n_per=20)
    labels = np.full(60, -1)
    with pytest.raises(ValueError, match="at least two classes"):
        encoders.supervised_gcn_hidden(g, labels)
    with pytest.raises(ValueError, match=r"shape \(60,\)"):
        encoders.supervised_gcn_hidden(g, labels[:10])
    labels[[0, 1, 20, 21, 40, 41]] = g.y.numpy()[[0, 1, 20, 21, 40, 41]]
    h = encoders.supervised_gcn_hidden(g, labels, hidden=8, epochs=20)
    assert h.shape == (60, 8) and (h >= 0).all()  # post-ReLU hidden layer
    assert encoders.ENCODERS["gcn-sup"] is True and encoders.ENCODERS["dgi"] is False


class _FakeText:
    def __init__(self) -> None:
        self.sources: list = []

    @hookimpl
    def simskip_extract_embeddings(self, source, options):
        self.sources.append(source)
        return EmbeddingSet(np.ones((len(source["texts"]), 4), np.float32))


def test_text_features_go_through_the_extraction_hook():
    from simskip_core import hooks

    manager = pluggy.PluginManager(hooks.PROJECT)
    manager.add_hookspecs(hooks)
    with pytest.raises(RuntimeError, match="no simskip plugin turned texts into embeddings"):
        encoders.text_features(["a"], model="m", plugin_manager=manager)
    fake = _FakeText()
    manager.register(fake)
    out = encoders.text_features(["Bush vs. the Beltway", "x"], model="m", plugin_manager=manager)
    assert out.shape == (2, 4)
    assert fake.sources == [{"texts": ["Bush vs. the Beltway", "x"], "model": "m"}]
    with pytest.raises(ValueError, match="at least one text"):
        encoders.text_features([], model="m", plugin_manager=manager)


# ---------------------------------------------------------------------------------------------- structure-aware


def test_structure_aware_starts_at_the_propagated_base_and_round_trips(tmp_path):
    g = planted_partition(n_per=20)
    model = StructureAwareSimSkip(hops=2, epochs=1, seed=0, progress=False, lr=1e-12)
    out = model.fit_transform(g.x, g.edge_index)
    np.testing.assert_allclose(out, ops.propagate(g.x.numpy(), g.edge_index, hops=2), atol=1e-5)
    assert model.model_ is not None and model.model_.signals_ == ["edges"]
    model.save(tmp_path / "m")
    again = StructureAwareSimSkip.load(tmp_path / "m")
    np.testing.assert_array_equal(again.transform(g.x, g.edge_index), out)
    with pytest.raises(FileExistsError):
        model.save(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(CorruptModelError, match="not valid JSON"):
        StructureAwareSimSkip.load(tmp_path / "m")
    with pytest.raises(CorruptModelError, match=r"config\.json is missing"):
        StructureAwareSimSkip.load(tmp_path)
    with pytest.raises(ValueError, match="nodes"):
        model.transform(g.x[:10], g.edge_index)
    with pytest.raises(ValueError, match="outside"):
        model.transform(g.x, g.edge_index + 100)


@pytest.mark.slow
def test_structure_aware_closes_the_gap_a_per_node_refiner_leaves():
    g = planted_partition(n_per=50, noise=3.0, seed=1)
    x, ei, y = g.x.numpy(), g.edge_index, g.y.numpy()
    tr, te = stratified_split(y, 0.5, 0)

    def acc(z: np.ndarray) -> float:
        return classification_eval(z[tr], y[tr], z[te], y[te]).metrics["probe_acc"]

    kwargs = {"epochs": 8, "seed": 0, "progress": False, "batch_size": 128}
    per_node = (
        SimSkip(loss="multisimilarity", **kwargs)
        .fit(x, pairs={"edges": ops.edge_pairs(ei, 150)})
        .transform(x)
    )
    structure = StructureAwareSimSkip(hops=2, **kwargs).fit_transform(x, ei)
    averaged = ops.neighbour_average(x, ei)
    assert acc(averaged) > acc(per_node) + 0.1  # the reference gap
    assert acc(structure) >= acc(averaged) - 0.03  # closed


# ---------------------------------------------------------------------------------------------- transform


class _AddOne(BaseTransform):
    def forward(self, data):
        data.x = data.x + 1
        return data


def test_refine_nodes_transform_in_compose():
    g = planted_partition(n_per=10)
    per_node = SimSkip(epochs=1, seed=0, progress=False, batch_size=16).fit(g.x.numpy() + 1)
    pipeline = Compose([_AddOne(), RefineNodes(per_node, out_attr="z")])
    out = pipeline(g)
    np.testing.assert_allclose(out.z.numpy(), per_node.transform(g.x.numpy() + 1), atol=1e-6)
    assert torch.equal(out.x, g.x + 1) and not hasattr(g, "z")
    structure = StructureAwareSimSkip(epochs=1, seed=0, progress=False).fit(g.x, g.edge_index)
    refined = Compose([RefineNodes(structure)])(g)
    np.testing.assert_allclose(refined.x.numpy(), structure.transform(g.x, g.edge_index), atol=1e-6)
    assert "StructureAwareSimSkip" in repr(RefineNodes(structure))
    with pytest.raises(KeyError, match="no node attribute 'h'"):
        RefineNodes(per_node, attr="h")(g)
    bad = g.clone()
    bad.x = bad.x[:5]
    with pytest.raises(ValueError, match="5 rows but the graph has 30 nodes"):
        RefineNodes(per_node)(bad)
    with pytest.raises(TypeError, match="fitted SimSkip"):
        RefineNodes(object())


# ---------------------------------------------------------------------------------------------- tasks and hooks


def test_task_data_split_and_evaluation_errors():
    g = planted_partition(n_per=10)
    data = build_task_data(g, g.x.numpy(), seed=3)
    ctx = data.context
    assert set(ctx["train_index"]).isdisjoint(ctx["test_index"])
    assert len(ctx["train_index"]) == 15 and np.bincount(g.y.numpy()[ctx["train_index"]]).tolist() == [
        5,
        5,
        5,
    ]
    assert (data.train.labels[ctx["test_index"]] == -1).all()  # test labels hidden from methods
    assert (data.train.labels[ctx["train_index"]] >= 0).all()
    result = evaluate(data, data.train.vectors, data.test.vectors, 0)
    assert set(result.metrics) == {"probe_acc", "probe_macro_f1", "knn5_acc"}
    assert len(result.items["probe_acc"].values) == 15
    with pytest.raises(ValueError, match=r"shape \(29, 16\)"):
        evaluate(data, data.train.vectors[:29], data.test.vectors, 0)
    with pytest.raises(ValueError, match="one row per node"):
        build_task_data(g, g.x.numpy()[:7])
    with pytest.raises(ValueError, match=r"no data\.y"):
        build_task_data(Data(edge_index=g.edge_index, num_nodes=30), g.x.numpy())
    unlabelled = data.__class__(train=data.train, test=data.test, context={"num_nodes": 30})
    with pytest.raises(ValueError, match="no node labels"):
        evaluate(unlabelled, data.train.vectors, data.test.vectors, 0)
    bad = Data(edge_index=torch.tensor([[0], [40]]), y=g.y, num_nodes=30)
    with pytest.raises(ValueError, match="outside"):
        build_task_data(bad, g.x.numpy())


def test_registered_tasks_carry_their_own_evaluation_and_methods():
    tasks = {t.name: t for t in graph_tasks()}
    assert len(tasks) == 15 and "graph/karate-text" not in tasks
    assert {n for n, t in tasks.items() if t.quick} == {
        "graph/polbooks-text",
        "graph/football-dgi",
        "graph/karate-skipgram",
    }
    # core methods train on n - 10 % rows: the batch must fit in them on small graphs
    assert tasks["graph/karate-dgi"].defaults["batch_size"] == 31
    assert tasks["graph/polblogs-dgi"].defaults["batch_size"] == 256
    karate = tasks["graph/karate-dgi"]
    assert (
        karate.evaluate is evaluate and karate.pair_signals is not None and karate.default_probe is not None
    )
    assert not hasattr(plugin, "simskip_evaluate") and not hasattr(plugin, "simskip_pair_signals")
    names = [m.name for m in karate.methods]
    assert names == [
        "neighbour-average",
        "sgc-propagation",
        "spectral",
        "simskip-structure",
        "simskip-auto-graph",
    ]
    auto = next(m for m in karate.methods if m.name == "simskip-auto-graph")
    assert auto.family == "simskip" and not auto.uses_labels


def test_karate_task_end_to_end(tmp_path):
    task = next(t for t in graph_tasks() if t.name == "graph/karate-skipgram")
    options = LoadOptions(cache_dir=tmp_path, progress=False)
    data = task.load(options)
    assert len(data.train) == 34 and data.train.dim == 64
    assert list((tmp_path / "graph").glob("*.npz"))  # base embeddings cached
    np.testing.assert_array_equal(task.load(options).train.vectors, data.train.vectors)
    pairs = task.pair_signals(data)
    assert pairs["edges"].shape == (78, 2)
    probe = task.default_probe(data)
    assert 0.0 <= probe(data.train.vectors, 0) <= 1.0
    for method in graph_methods():
        out = method.run(task, data, 0, {})
        assert out.train.shape[0] == 34
        result = task.evaluate(data, out.train, out.test, 0, {})
        assert 0.0 <= result.metrics["probe_acc"] <= 1.0
        if method.name == "simskip-auto-graph":
            assert out.info["probe"].startswith("LinkPredictionProbe") and out.info["uses_labels"] is False
            assert out.info["chosen"] in out.info["candidate_means"]


def test_extract_and_attach_hooks_for_pyg_data():
    g = planted_partition(n_per=10)
    emb = plugin.simskip_extract_embeddings(g, {})
    assert emb.vectors.shape == (30, 16) and emb.labels.tolist() == g.y.tolist()
    assert len(emb.pairs["edges"]) == g.edge_index.shape[1] // 2
    assert plugin.simskip_extract_embeddings({"texts": ["a"]}, {}) is None
    with pytest.raises(ValueError, match="no node attribute 'h'"):
        plugin.simskip_extract_embeddings(g, {"attr": "h"})
    model = SimSkip(epochs=1, seed=0, progress=False, batch_size=16).fit(emb.vectors)
    attached = plugin.simskip_attach(g, model)
    np.testing.assert_allclose(attached.x.numpy(), model.transform(emb.vectors), atol=1e-6)
    assert plugin.simskip_attach(object(), model) is None
