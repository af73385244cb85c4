"""The KG plugin's default probe for SimSkip's auto mode: filtered MRR on validation triples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from simskip_kg.embeddings import with_entity_vectors
from simskip_kg.evaluation import evaluate_link_prediction

__all__ = ["ValidationMRRProbe"]


@dataclass
class ValidationMRRProbe:
    """``probe(Z, split_seed) -> float``: write entity vectors ``Z`` into a copy of ``model`` and return the
    filtered MRR on a random ``fraction`` of the validation triples (a new draw per ``split_seed``).

    Filtering uses the training and all validation triples, never the test triples, so auto mode's
    choice never sees the test split. Uses no class labels (``uses_labels = False``): validation
    triples are held-out edges of the same graph, the KG counterpart of a validation split.

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

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must lie in (0, 1], got {self.fraction}.")

    def __call__(self, z: np.ndarray, split_seed: int) -> float:
        """Filtered validation MRR of the model with entity vectors ``z`` on split ``split_seed``."""
        triples = self.validation.mapped_triples
        n = triples.shape[0]
        keep = max(1, round(n * self.fraction))
        idx = torch.from_numpy(np.sort(np.random.default_rng(split_seed).permutation(n)[:keep]))
        model = with_entity_vectors(self.model, z)
        result = evaluate_link_prediction(
            model,
            triples[idx],
            filter_triples=[self.training.mapped_triples, triples],
            batch_size=self.batch_size,
        )
        return float(result.metrics["mrr"])

    def __repr__(self) -> str:
        return f"ValidationMRRProbe(model={type(self.model).__name__}, fraction={self.fraction})"
