"""A query-side adapter: the corpus stays as encoded, queries go through a map trained on labelled pairs.

- :func:`fit_query_adapter`: a SimSkip map f(q) = q + g(q) (the core's :class:`SkipRefiner`, starting
  as the identity) trained on k (query, relevant document) pairs with :func:`query_adapter_loss`, a
  contrastive loss over in-batch and mined hard negatives against the *fixed* document embeddings.
- :func:`fit_linear_adapter`: the baseline of LlamaIndex and Chroma, a linear map q W + b (W starts at
  the identity) trained with a MultipleNegativesRanking-style loss (in-batch negatives only).
- :func:`attach_query_adapter`: a ``SentenceTransformer`` whose ``encode_query`` applies the adapter and
  whose ``encode_document`` does not, through sentence-transformers' ``Router``; the adapter is written as
  built-in ``Dense`` modules, so ``SentenceTransformer(path)`` reloads both routes with no custom code.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simskip_core.refiner import SkipRefiner

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Module

__all__ = [
    "AdapterFit",
    "attach_query_adapter",
    "fit_info",
    "fit_linear_adapter",
    "fit_query_adapter",
    "mine_negatives",
    "query_adapter_loss",
    "split_queries",
]

logger = logging.getLogger(__name__)


def query_adapter_loss(
    queries: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    positive_ids: torch.Tensor,
    *,
    temperature: float = 0.05,
) -> torch.Tensor:
    """InfoNCE of adapted queries against in-batch positives and mined negatives.

    Args:
        queries: (b, d) adapted, L2-normalised queries.
        positives: (b, d) normalised embeddings of each query's relevant document.
        negatives: (b, m, d) normalised embeddings of each query's mined negative documents.
        positive_ids: (b,) document ids of ``positives``; another row's positive with the same id is no
            negative for this query and is masked out.
        temperature: the softmax temperature.

    Returns:
        The mean over queries of ``-log softmax`` of the own positive among the batch's positives and the
        query's own negatives.
    """
    in_batch = queries @ positives.T
    same = positive_ids[:, None] == positive_ids[None, :]
    in_batch = in_batch.masked_fill(same & ~torch.eye(len(queries), dtype=torch.bool), float("-inf"))
    mined = torch.einsum("bd,bmd->bm", queries, negatives)
    logits = torch.cat([in_batch, mined], dim=1) / temperature
    return F.cross_entropy(logits, torch.arange(len(queries)))


def mine_negatives(
    queries: np.ndarray, docs: np.ndarray, relevant: list[np.ndarray], *, count: int
) -> np.ndarray:
    """(n, count) int64: per query, the ``count`` highest-scoring documents that are not relevant to it."""
    sims = queries @ docs.T
    for i, rel in enumerate(relevant):
        sims[i, rel] = -np.inf
    depth = min(count, docs.shape[0] - max(len(r) for r in relevant))
    part = np.argpartition(-sims, depth - 1, axis=1)[:, :depth]
    return np.asarray(part, dtype=np.int64)


@dataclass(frozen=True)
class AdapterFit:
    """How a query adapter was trained, set as ``adapter.fit_info_`` by the fit functions.

    Attributes:
        val_ndcg: validation nDCG@10 of the adapted held-out queries against the fixed corpus, per epoch;
            entry 0 is before any training (the identity). Empty when ``validation=0``.
        best_epoch: the epoch whose weights were kept (0: the identity); the last epoch run when there
            is no validation split.
        epochs_run: epochs trained before early stopping (or all of them).
        n_train_queries, n_val_queries: the split of the given queries.
    """

    val_ndcg: tuple[float, ...]
    best_epoch: int
    epochs_run: int
    n_train_queries: int
    n_val_queries: int


def fit_info(adapter: nn.Module) -> AdapterFit:
    """The :class:`AdapterFit` of an adapter :func:`fit_query_adapter` or :func:`fit_linear_adapter` returned."""
    info = adapter.__dict__.get("fit_info_")
    if not isinstance(info, AdapterFit):
        raise ValueError(
            f"this {type(adapter).__name__} carries no fit record; train it with fit_query_adapter or fit_linear_adapter."
        )
    return info


def _pair_arrays(relevant: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    rows = [(q, int(d)) for q, docs in enumerate(relevant) for d in docs]
    pairs = np.array(rows, dtype=np.int64).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def _unit(x: np.ndarray) -> torch.Tensor:
    return F.normalize(torch.as_tensor(np.asarray(x, dtype=np.float32)), dim=-1)


def split_queries(n: int, validation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (training, validation) query indices: ``round(validation * n)`` queries are held out.

    Raises:
        ValueError: ``validation`` is outside [0, 1), or it leaves no validation or fewer than 2
            training queries (pass ``validation=0`` to train on every pair without early stopping).
    """
    if not 0.0 <= validation < 1.0:
        raise ValueError(f"validation must be a fraction in [0, 1), got {validation!r}.")
    n_val = round(validation * n)
    order = np.random.default_rng([seed, n]).permutation(n)
    if validation > 0 and (n_val < 1 or n - n_val < 2):
        raise ValueError(
            f"validation={validation} of {n} queries leaves {n_val} validation and {n - n_val} training "
            "queries; give more labelled pairs or pass validation=0 (no early stopping)."
        )
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _val_ndcg(
    adapter: nn.Module, queries: torch.Tensor, docs: np.ndarray, relevant: list[np.ndarray]
) -> float:
    from simskip_text.retrieval import retrieval_scores

    adapter.eval()
    with torch.no_grad():
        adapted = adapter(queries).numpy()
    adapter.train()
    return float(retrieval_scores(adapted, docs, relevant)["ndcg@10"].mean())


def _run_epoch(
    adapter: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[np.ndarray],
    tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    pairs: tuple[np.ndarray, np.ndarray],
    temperature: float,
) -> None:
    q, d, mined = tensors
    query_ids, doc_ids = pairs
    for rows in batches:
        qi, di = torch.as_tensor(query_ids[rows]), torch.as_tensor(doc_ids[rows])
        adapted = F.normalize(adapter(q[qi]), dim=-1)
        neg = d[mined[qi]] if mined is not None else torch.zeros(len(rows), 0, d.shape[1])
        loss = query_adapter_loss(adapted, d[di], neg, di, temperature=temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _batches(rng: np.random.Generator, n_pairs: int, batch_size: int) -> list[np.ndarray]:
    order = rng.permutation(n_pairs)
    return [b for b in np.array_split(order, range(batch_size, n_pairs, batch_size)) if len(b) >= 2]


def _train(
    adapter: nn.Module,
    queries: np.ndarray,
    docs: np.ndarray,
    relevant: list[np.ndarray],
    *,
    negatives: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    temperature: float,
    validation: float,
    patience: int,
    seed: int,
) -> AdapterFit:
    """Train ``adapter`` in place; with a validation split, keep the epoch of best validation nDCG@10."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = split_queries(len(queries), validation, seed)
    q, d = _unit(queries), _unit(docs)
    train_rel = [relevant[i] for i in train_idx]
    pairs = _pair_arrays(train_rel)
    mined = (
        torch.as_tensor(mine_negatives(q[train_idx].numpy(), d.numpy(), train_rel, count=negatives))
        if negatives
        else None
    )
    tensors = (q[train_idx], d, mined)
    val_q, val_rel = q[val_idx], [relevant[i] for i in val_idx]
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=lr, weight_decay=weight_decay)
    adapter.train()
    scores = [_val_ndcg(adapter, val_q, d.numpy(), val_rel)] if len(val_idx) else []
    best_epoch, best_state, epoch = 0, copy.deepcopy(adapter.state_dict()), 0
    for epoch in range(1, epochs + 1):
        _run_epoch(adapter, optimizer, _batches(rng, len(pairs[0]), batch_size), tensors, pairs, temperature)
        if not scores:
            continue
        scores.append(_val_ndcg(adapter, val_q, d.numpy(), val_rel))
        if scores[-1] > scores[best_epoch]:
            best_epoch, best_state = epoch, copy.deepcopy(adapter.state_dict())
        elif epoch - best_epoch >= patience:
            break
    if scores:
        adapter.load_state_dict(best_state)
    adapter.eval()
    fit = AdapterFit(tuple(scores), best_epoch if scores else epoch, epoch, len(train_idx), len(val_idx))
    logger.info(
        "query adapter: kept epoch %d of %d (validation nDCG@10 %s)",
        fit.best_epoch,
        fit.epochs_run,
        f"{scores[0]:.4f} -> {scores[best_epoch]:.4f}" if scores else "not measured",
    )
    return fit


def _check_pairs(queries: np.ndarray, relevant: list[np.ndarray]) -> None:
    if len(queries) != len(relevant):
        raise ValueError(f"{len(queries)} queries but {len(relevant)} relevance lists; give one per query.")


def fit_query_adapter(
    queries: np.ndarray,
    docs: np.ndarray,
    relevant: list[np.ndarray],
    *,
    negatives: int = 32,
    epochs: int = 100,
    batch_size: int = 64,
    lr: float = 1e-4,
    weight_decay: float = 1e-4,
    temperature: float = 0.02,
    hidden_dim: int | None = None,
    validation: float = 0.2,
    patience: int = 10,
    seed: int = 0,
) -> SkipRefiner:
    """Train the SimSkip query map f(q) = q + g(q) (normalised output) on labelled pairs.

    A seeded ``validation`` share of the queries is held out; after every epoch the adapted held-out
    queries are ranked against the fixed corpus, and the weights of the epoch with the best nDCG@10 are
    kept (epoch 0 is the identity, since g's last layer starts at zero, so the adapter is never worse
    than the raw embeddings on the held-out queries). Training stops after ``patience`` epochs without
    improvement. ``adapter.fit_info_`` (an :class:`AdapterFit`) records the curve.

    Args:
        queries: (n, d) embeddings of the training queries.
        docs: (N, d) the fixed document embeddings (never changed).
        relevant: per training query, the indices of its relevant documents in ``docs``.
        negatives: hard negatives mined per query (the top-scoring non-relevant documents under the raw
            embeddings), in addition to the batch's other positives; 0 uses in-batch negatives only.
        epochs, batch_size, lr, weight_decay, temperature: the AdamW optimisation (weight decay pulls g
            towards zero, i.e. f towards the identity) and the InfoNCE temperature; ``epochs`` is the most
            epochs run.
        hidden_dim: width of g (default d).
        validation: the share of queries held out for early stopping; 0 trains on all of them for
            ``epochs`` epochs.
        patience: epochs without a better validation nDCG@10 before stopping.
        seed: seed of the split, initialisation and batch order.

    The defaults were chosen by ``benchmarks/retrieval_k_curve.py --select`` on validation splits of the
    Debian training queries only (docs/retrieval.md); test queries played no part.
    """
    _check_pairs(queries, relevant)
    torch.manual_seed(seed)
    refiner = SkipRefiner(int(queries.shape[1]), hidden_dim=hidden_dim, normalize_output=True)
    refiner.__dict__["fit_info_"] = _train(
        refiner,
        queries,
        docs,
        relevant,
        negatives=negatives,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        temperature=temperature,
        validation=validation,
        patience=patience,
        seed=seed,
    )
    return refiner


def fit_linear_adapter(
    queries: np.ndarray,
    docs: np.ndarray,
    relevant: list[np.ndarray],
    *,
    epochs: int = 100,
    batch_size: int = 64,
    lr: float = 3e-4,
    temperature: float = 0.05,
    validation: float = 0.2,
    patience: int = 10,
    seed: int = 0,
) -> nn.Linear:
    """The LlamaIndex / Chroma baseline: q -> q W^T + b (identity start), MultipleNegativesRanking loss
    (each query against the batch's positives), on the same pairs, with the same validation split and
    early stopping as :func:`fit_query_adapter` (``linear.fit_info_``); its ``lr`` and ``temperature``
    defaults were chosen by the same rule."""
    _check_pairs(queries, relevant)
    d = int(queries.shape[1])
    linear = nn.Linear(d, d)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(d))
        linear.bias.zero_()
    linear.__dict__["fit_info_"] = _train(
        linear,
        queries,
        docs,
        relevant,
        negatives=0,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=0.0,
        temperature=temperature,
        validation=validation,
        patience=patience,
        seed=seed,
    )
    return linear


def _adapter_modules(adapter: nn.Module) -> list[Module]:
    from sentence_transformers.base.modules import Dense, Normalize

    from simskip_text.export import portable_modules

    if isinstance(adapter, SkipRefiner):
        return portable_modules(adapter, normalize=True)
    if isinstance(adapter, nn.Linear):
        dense = Dense(
            adapter.in_features,
            adapter.out_features,
            activation_function=nn.Identity(),
            init_weight=adapter.weight.detach().clone(),
            init_bias=adapter.bias.detach().clone(),
        )
        return [dense, Normalize()]
    raise TypeError(f"adapter must be a SkipRefiner or an nn.Linear, got {type(adapter).__name__}.")


def attach_query_adapter(
    model: SentenceTransformer, adapter: nn.Module, **kwargs: Any
) -> SentenceTransformer:
    """A copy of ``model`` whose ``encode_query`` applies ``adapter`` and whose ``encode_document`` does not.

    Both routes share the base model's modules (one copy of the transformer, saved once); the query
    route appends the adapter as ``Dense`` modules and ``Normalize``. ``encode`` without a task uses the
    document route. The copy is named as a refined model (``model_card_data``, ``simskip`` tag).

    Args:
        model: a ``SentenceTransformer`` whose (normalised) embeddings the adapter was trained on.
        adapter: :func:`fit_query_adapter`'s refiner or :func:`fit_linear_adapter`'s linear map.
        **kwargs: passed to the new ``SentenceTransformer`` (``device``, ...).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Router

    base = copy.deepcopy(model)
    modules = cast("list[Module]", list(base._modules.values()))
    router = Router.for_query_document(
        query_modules=[*modules, *_adapter_modules(adapter)], document_modules=modules
    )
    adapted = SentenceTransformer(modules=[router], device=str(base.device), **kwargs)
    card = adapted.model_card_data
    card.base_model = base.model_card_data.base_model or model.model_card_data.model_name
    card.add_tags(["simskip", "query-adapter"])
    adapted.similarity_fn_name = base.similarity_fn_name
    return adapted
