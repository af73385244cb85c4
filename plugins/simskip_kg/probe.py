"""The KG plugin's default probe for SimSkip's auto mode: filtered MRR on validation triples.

The probe scores exactly the vectors it is given. For a model that keeps its entity rows
L2-normalised (TransE, DistMult: :func:`~simskip_kg.embeddings.entity_rows_normalised`) it says so
with ``row_normalize = True``: auto mode then normalises every candidate, so the vectors
``SimSkip.transform`` returns are the ones that were scored (and PyKEEN's constrainer leaves them
unchanged when they are written back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from simskip_kg.embeddings import entity_rows_normalised, with_entity_vectors
from simskip_kg.evaluation import evaluate_link_prediction

__all__ = ["ValidationMRRProbe"]


@dataclass
class ValidationMRRProbe:
    """``probe(Z, split_seed) -> float``: write entity vectors ``Z`` into a copy of ``model`` and return the
    filtered MRR on a random ``fraction`` of the validation triples (a new draw per ``split_seed``).

    Filtering uses the training and all validation triples, never the test triples, so auto mode's
    choice never sees the test split. Uses no class labels (``uses_labels = False``): validation
    triples are held-out edges of the same graph, the KG counterpart of a validation split.
    ``Z`` is written as given (no constrainer); ``row_normalize`` is True when the model keeps unit
    entity rows, so that auto mode hands it normalised candidates (see the module docstring).
    :meth:`score_model` scores a whole model (e.g. one whose relations were re-fitted).

    Attributes:
        model: the trained PyKEEN model whose entities ``Z`` replaces (relations as trained).
        training: training triples factory.
        validation: validation triples factory.
        fraction: share of validation triples scored per split.
        batch_size: evaluation batch size.
    """

    model: Any
    training: Any
    validation: Any
    fraction: float = 0.5
    batch_size: int = 256
    uses_labels: bool = field(default=False, init=False)
    row_normalize: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must lie in (0, 1], got {self.fraction}.")
        self.row_normalize = entity_rows_normalised(self.model)

    def __call__(self, z: np.ndarray, split_seed: int) -> float:
        """Filtered validation MRR of the model with entity vectors ``z`` (written as given) on split ``split_seed``."""
        return self.score_model(with_entity_vectors(self.model, z, constrain=False), split_seed)

    def score_model(self, model: Any, split_seed: int) -> float:
        """Filtered MRR of a whole PyKEEN ``model`` on split ``split_seed`` of the validation triples."""
        triples = self.validation.mapped_triples
        n = triples.shape[0]
        keep = max(1, round(n * self.fraction))
        idx = torch.from_numpy(np.sort(np.random.default_rng(split_seed).permutation(n)[:keep]))
        result = evaluate_link_prediction(
            model,
            triples[idx],
            filter_triples=[self.training.mapped_triples, triples],
            batch_size=self.batch_size,
        )
        return float(result.metrics["mrr"])

    def __repr__(self) -> str:
        return f"ValidationMRRProbe(model={type(self.model).__name__}, fraction={self.fraction})"
