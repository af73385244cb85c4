"""Node-classification benchmark tasks, their evaluation, default probe and the graph's own methods.

Protocol (transductive, as usual for node classification):

* Each task is one graph and one base encoder: ``graph/<graph>-<encoder>``. The encoder is trained
  on the CPU when the task loads (cached under ``LoadOptions.cache_dir``).
* One stratified split of the labelled nodes, 50 % train / 50 % test, drawn with ``LoadOptions.seed``
  (default 0) and fixed for every method and seed, as in OGB's rules (a fixed split, seeds for
  everything stochastic). ``data.train`` holds *all* nodes (methods see every node's features, as
  a transductive GNN does) with the labels of the training nodes only (``-1`` elsewhere);
  ``data.test`` holds the same nodes with all labels. The supervised-GCN encoder is trained on the
  training labels only, so its tasks are label-using.
* Evaluation (:func:`evaluate`): the shared logistic-regression probe (C tuned by CV on the training
  nodes) fitted on training nodes, scored on test nodes: accuracy, macro-F1 and 5-NN accuracy.
* Graph methods (:func:`graph_methods`): neighbour averaging ``x + mean(N(x))``, SGC propagation
  ``S^2 x`` (the structure-aware refiner's starting point), a spectral embedding of the graph alone
  (ignores the features), structure-aware SimSkip, and label-free graph auto mode
  (:class:`~simskip_graph.auto.GraphAutoSimSkip` with its link-prediction probe).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from simskip_core.cache import cache_key, cached_arrays
from simskip_core.embeddings import EmbeddingSet
from simskip_core.evaluation import classification_eval
from simskip_core.selection import LabelProbe
from simskip_core.tasks import EvalResult, LoadOptions, Method, MethodOutput, Task, TaskData
from simskip_graph import encoders
from simskip_graph.datasets import GRAPH_DATASETS, load_graph
from simskip_graph.ops import check_edge_index, edge_pairs, neighbour_average, propagate, spectral_embedding

__all__ = [
    "DOMAIN",
    "QUICK_TASKS",
    "TRAIN_FRACTION",
    "build_task_data",
    "default_probe",
    "edge_signal",
    "evaluate",
    "graph_methods",
    "graph_tasks",
    "stratified_split",
]

DOMAIN = "graph"
#: Share of labelled nodes in the fixed training split.
TRAIN_FRACTION = 0.5
#: Node counts after loading (polblogs: largest connected component), for batch sizes of small graphs.
NUM_NODES = {"polblogs": 1222, "polbooks": 105, "football": 115, "karate": 34}
#: Task names of the quick suite (small graphs, one of each encoder kind).
QUICK_TASKS = frozenset({"graph/polbooks-text", "graph/football-dgi", "graph/karate-skipgram"})
#: Version of the encoders' training code, part of the cache key.
ENCODER_VERSION = 1
SPECTRAL_DIM = 16


def stratified_split(
    y: np.ndarray, train_fraction: float = TRAIN_FRACTION, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test node indices, stratified by class; unlabelled nodes (-1) are in neither."""
    from sklearn.model_selection import train_test_split

    labelled = np.flatnonzero(y >= 0)
    if labelled.size < 4 or np.unique(y[labelled]).size < 2:
        raise ValueError("a node-classification split needs at least 4 labelled nodes from 2 classes.")
    counts = np.bincount(y[labelled])
    stratify = y[labelled] if counts[counts > 0].min() >= 2 else None
    tr, te = train_test_split(labelled, train_size=train_fraction, stratify=stratify, random_state=seed)
    return np.sort(tr), np.sort(te)


def _encode(
    graph: str, encoder: str, data: Any, train_labels: np.ndarray, options: LoadOptions
) -> np.ndarray:
    n = int(data.num_nodes)
    params: dict[str, Any] = {
        "graph": graph,
        "encoder": encoder,
        "n": n,
        "seed": options.seed,
        "v": ENCODER_VERSION,
    }
    if encoder == "gcn-sup":
        params["train_labels"] = cache_key(train_labels.tolist())
    if encoder == "text":
        params["texts"] = cache_key(list(data.node_names))

    def compute() -> dict[str, np.ndarray]:
        if encoder == "dgi":
            z = encoders.deep_graph_infomax(data, seed=options.seed, progress=options.progress)
        elif encoder == "skipgram":
            z = encoders.random_walk_skipgram(
                data.edge_index, n, seed=options.seed, progress=options.progress
            )
        elif encoder == "gcn-sup":
            z = encoders.supervised_gcn_hidden(
                data, train_labels, seed=options.seed, progress=options.progress
            )
        elif encoder == "text":
            z = encoders.text_features(
                data.node_names,
                options={
                    "progress": options.progress,
                    "cache_dir": options.cache_dir,
                    "use_cache": options.use_cache,
                },
            )
        else:
            raise KeyError(f"unknown encoder {encoder!r}; choose one of {sorted(encoders.ENCODERS)}.")
        return {"z": np.asarray(z, dtype=np.float32)}

    return cached_arrays(options.cache_dir, "graph", cache_key(params), compute, enabled=options.use_cache)[
        "z"
    ]


def build_task_data(
    data: Any,
    vectors: np.ndarray,
    *,
    seed: int = 0,
    train_fraction: float = TRAIN_FRACTION,
    meta: dict[str, Any] | None = None,
) -> TaskData:
    """The :class:`TaskData` of a node-classification task from a PyG ``Data`` (with ``y``) and node
    embeddings ``vectors`` (one row per node); see the module docstring for the protocol.

    Raises:
        ValueError: the graph has no labels, or ``vectors`` has another row count than the graph.
    """
    n = int(data.num_nodes)
    y = getattr(data, "y", None)
    if y is None:
        raise ValueError("node classification needs node labels: the graph has no data.y.")
    y = np.asarray(y.cpu().numpy() if hasattr(y, "cpu") else y, dtype=np.int64)
    if y.shape != (n,):
        raise ValueError(f"data.y must have shape ({n},), got {y.shape}.")
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise ValueError(
            f"the node embeddings have shape {vectors.shape} but the graph has {n} nodes; one row per node is needed."
        )
    ei = check_edge_index(data.edge_index, n)
    train_index, test_index = stratified_split(y, train_fraction, seed)
    masked = np.full(n, -1, dtype=np.int64)
    masked[train_index] = y[train_index]
    ids = list(getattr(data, "node_names", None) or range(n))
    meta = dict(meta or {})
    train = EmbeddingSet(vectors, ids=ids, labels=masked, meta=meta)
    test = EmbeddingSet(vectors, ids=ids, labels=y, meta=meta)
    context = {
        "edge_index": ei,
        "num_nodes": n,
        "y": y,
        "train_index": train_index,
        "test_index": test_index,
        "graph": data,
    }
    return TaskData(train=train, test=test, context=context)


def _loader(graph: str, encoder: str) -> Callable[[LoadOptions], TaskData]:
    def load(options: LoadOptions) -> TaskData:
        data = load_graph(graph)
        y = data.y.numpy()
        train_index, _ = stratified_split(y, TRAIN_FRACTION, options.seed)
        train_labels = np.full(len(y), -1, dtype=np.int64)
        train_labels[train_index] = y[train_index]
        vectors = _encode(graph, encoder, data, train_labels, options)
        meta = {
            "domain": DOMAIN,
            "graph": graph,
            "encoder": encoder,
            "source": str(getattr(data, "source", graph)),
        }
        return build_task_data(data, vectors, seed=options.seed, meta=meta)

    return load


def _defaults(graph: str) -> dict[str, Any]:
    n = NUM_NODES[graph]
    # every core method trains on all n nodes minus the 10 % validation share
    return {"epochs": 50, "batch_size": int(min(256, n - round(0.1 * n)))}


def graph_tasks() -> list[Task]:
    """One task per graph and base encoder (text only for graphs with node names)."""
    tasks = []
    methods = tuple(graph_methods())
    for graph, spec in GRAPH_DATASETS.items():
        for encoder in encoders.ENCODERS:
            if encoder == "text" and spec.names is None:
                continue
            name = f"{DOMAIN}/{graph}-{encoder}"
            what = {
                "dgi": "DeepGraphInfomax (one-hot input, GCN encoder)",
                "skipgram": "random-walk skip-gram (DeepWalk / node2vec p=q=1)",
                "gcn-sup": "hidden layer of a supervised GCN (trained on the training labels: label-using encoder)",
                "text": "MiniLM embeddings of the node names through the text plugin",
            }[encoder]
            source = (
                "torch_geometric KarateClub"
                if spec.file is None
                else f"Debian python3-graph-tool collection/{spec.file}"
            )
            tasks.append(
                Task(
                    name=name,
                    domain=DOMAIN,
                    description=f"{spec.description}; base: {what}",
                    source=source,
                    load=_loader(graph, encoder),
                    primary_metric="probe_acc",
                    metrics=("probe_acc", "probe_macro_f1", "knn5_acc"),
                    defaults=_defaults(graph),
                    quick=name in QUICK_TASKS,
                    evaluate=evaluate,
                    default_probe=default_probe,
                    pair_signals=edge_signal,
                    methods=methods,
                )
            )
    return tasks


def evaluate(
    data: TaskData, train: np.ndarray, test: np.ndarray, seed: int, extras: Mapping[str, Any] | None = None
) -> EvalResult:
    """Probe accuracy, macro-F1 and 5-NN accuracy: fit on the training nodes' rows of ``train``,
    score the test nodes' rows of ``test`` (both have one row per node).

    Raises:
        ValueError: the graph has no labels, or a matrix has another row count than the graph.
    """
    ctx = data.context
    y = ctx.get("y")
    if y is None or "train_index" not in ctx:
        raise ValueError(
            "the task data has no node labels (context['y'], build it with build_task_data); "
            "node classification cannot be evaluated."
        )
    n = int(ctx["num_nodes"])
    for what, arr in (("train", train), ("test", test)):
        if arr.ndim != 2 or arr.shape[0] != n:
            raise ValueError(
                f"the {what} embeddings have shape {arr.shape} but the graph has {n} nodes; one row per node is needed."
            )
    tr, te = ctx["train_index"], ctx["test_index"]
    return classification_eval(train[tr], y[tr], test[te], y[te], seed=seed)


def default_probe(data: TaskData) -> LabelProbe:
    """Auto mode's probe: logistic-regression accuracy on validation splits of the training nodes only."""
    labels = data.train.labels
    if labels is None:
        raise ValueError("the task's training nodes carry no labels; there is no default probe.")
    return LabelProbe(labels, metric="logreg")


# ---------------------------------------------------------------------------------------------- methods


def _graph_of(data: TaskData) -> tuple[np.ndarray, int]:
    ctx = data.context
    if "edge_index" not in ctx:
        raise ValueError("the task's context holds no 'edge_index'; graph methods need the graph.")
    n = int(ctx["num_nodes"])
    if len(data.train) != n:
        raise ValueError(f"the task has {len(data.train)} training rows but the graph has {n} nodes.")
    return ctx["edge_index"], n


def _fixed(
    fn: Callable[[np.ndarray, np.ndarray, int], np.ndarray], **info: Any
) -> Callable[..., MethodOutput]:
    def run(task: Task, data: TaskData, seed: int, state: dict[str, Any]) -> MethodOutput:
        ei, n = _graph_of(data)
        tic = time.perf_counter()
        out = fn(data.train.vectors, ei, n)
        return MethodOutput(train=out, test=out, fit_seconds=time.perf_counter() - tic, info=dict(info))

    return run


def _run_structure(task: Task, data: TaskData, seed: int, state: dict[str, Any]) -> MethodOutput:
    from simskip_core.bench.methods import simskip_kwargs
    from simskip_graph.structure import StructureAwareSimSkip

    ei, _ = _graph_of(data)
    kwargs = simskip_kwargs(task, loss="multisimilarity")
    kwargs.pop("batch_size", None)  # capped by the refiner itself
    model = StructureAwareSimSkip(hops=2, **kwargs, seed=seed, progress=False)
    tic = time.perf_counter()
    model.fit(data.train.vectors, ei)
    fit_seconds = time.perf_counter() - tic
    tic = time.perf_counter()
    out = model.transform(data.train.vectors, ei)
    assert model.model_ is not None
    info = {
        "apply_seconds": time.perf_counter() - tic,
        "hops": model.hops,
        "epochs_run": len(model.model_.history_),
        "signals": list(model.model_.signals_),
        "mean_shift_from_base": float(
            np.linalg.norm(out - model.base(data.train.vectors, ei), axis=1).mean()
        ),
    }
    return MethodOutput(train=out, test=out, fit_seconds=fit_seconds, info=info)


def _run_auto_link(task: Task, data: TaskData, seed: int, state: dict[str, Any]) -> MethodOutput:
    from simskip_core.bench.methods import fit_memo, simskip_kwargs
    from simskip_graph.auto import GraphAutoSimSkip

    ei, _ = _graph_of(data)
    kwargs = simskip_kwargs(task)
    # the refiner the simskip-ntxent row of this (task, seed) already trained, not a second one
    refiner, reused = fit_memo(state).fit(kwargs, seed, data.train.vectors)
    kwargs.pop("batch_size", None)  # capped to the graph by the refiners
    model = GraphAutoSimSkip(seed=seed, **{**kwargs, "progress": False})
    tic = time.perf_counter()
    model.fit(data.train.vectors, ei, refiner=refiner)
    fit_seconds = time.perf_counter() - tic + float(refiner.fit_seconds_ or 0.0)  # what auto costs a user
    tic = time.perf_counter()
    out = model.transform(data.train.vectors, ei)
    assert model.selection_ is not None
    info = {
        "apply_seconds": time.perf_counter() - tic,
        "chosen": model.chosen,
        "selection_reason": model.selection_["reason"],
        "probe": model.selection_["probe"],
        "uses_labels": False,
        "candidate_means": {name: round(v, 4) for name, v in model.scores().items()},
        "refiner_reused": reused,
    }
    return MethodOutput(train=out, test=out, fit_seconds=fit_seconds, info=info)


def graph_methods() -> list[Method]:
    """The graph's own rows: non-learned structural baselines, structure-aware SimSkip and label-free
    graph auto mode (link prediction on held-out edges over the core's and the graph's candidates)."""
    return [
        Method(
            "neighbour-average",
            "baseline",
            False,
            _fixed(lambda x, ei, n: neighbour_average(x, ei, num_nodes=n), formula="x + mean(N(x))"),
            stochastic=False,
            description="x_i + mean of the neighbours' x (non-learned)",
        ),
        Method(
            "sgc-propagation",
            "baseline",
            False,
            _fixed(lambda x, ei, n: propagate(x, ei, hops=2, num_nodes=n), formula="S^2 x"),
            stochastic=False,
            description="SGC: S^2 x with S = D^-1/2 (A+I) D^-1/2 (the structure-aware refiner's start)",
        ),
        Method(
            "spectral",
            "baseline",
            False,
            _fixed(lambda x, ei, n: spectral_embedding(ei, n, SPECTRAL_DIM), dim=SPECTRAL_DIM),
            stochastic=False,
            description=f"Laplacian eigenmaps of the graph alone ({SPECTRAL_DIM} dims, ignores x)",
        ),
        Method(
            "simskip-structure",
            "simskip",
            False,
            _run_structure,
            description="skip refiner on S^2 x, edges as extra positives (multi-similarity loss)",
        ),
        Method(
            "simskip-auto-graph",
            "simskip",
            False,
            _run_auto_link,
            description="auto mode over the core's and the graph's candidates, probe: link prediction on "
            "held-out edges (label-free)",
        ),
    ]


def edge_signal(data: TaskData) -> dict[str, np.ndarray]:
    """The ``edges`` positive-pair signal over the task's rows (one row per node)."""
    ei, n = _graph_of(data)
    return {"edges": edge_pairs(ei, n)}
