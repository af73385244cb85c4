"""The SimSkip stage: a sentence-transformers module that applies a fitted SimSkip refiner.

The import path ``simskip_text.module.SimSkipStage`` is written into a saved model's ``modules.json``
and is kept stable across releases, so saved models keep loading.

Saved layout of the stage's folder (e.g. ``3_SimSkipStage/``)::

    simskip_stage.json   the stage's own configuration (``config_keys``)
    config.json          the SimSkip model's configuration, as written by ``SimSkip.save``
    model.safetensors    the SimSkip model's weights (safetensors; never pickle)

so the folder is also a regular SimSkip model folder: ``SimSkip.load("3_SimSkipStage")`` works.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Module, Normalize
from torch import Tensor

from simskip_core.errors import CorruptModelError

if TYPE_CHECKING:
    from sentence_transformers.base.model import BaseModel

    from simskip_core.api import SimSkip

try:
    from typing import Self
except ImportError:  # Python < 3.11
    from typing_extensions import Self

__all__ = ["RefinedSentenceTransformer", "SimSkipStage", "as_refined", "pipeline_normalizes"]

_SIMSKIP_FILES = ("config.json", "model.safetensors")


def pipeline_normalizes(modules: Any) -> bool:
    """True when the last module of ``modules`` (a ``SentenceTransformer`` or a list) L2-normalises
    the sentence embedding, i.e. is a :class:`~sentence_transformers.base.modules.Normalize` module
    writing ``sentence_embedding``."""
    items = list(modules._modules.values()) if hasattr(modules, "_modules") else list(modules)
    if not items:
        return False
    last = items[-1]
    return isinstance(last, Normalize) and last.module_output_name == "sentence_embedding"


class SimSkipStage(Module):
    """Applies a fitted :class:`~simskip_core.api.SimSkip` map to the pipeline's sentence embedding.

    Append it after the last module of a ``SentenceTransformer`` (``simskip_text.refine_model`` does
    this for you); ``model.encode`` then returns refined embeddings.

    Re-normalisation: when the pipeline it is appended to ends in ``Normalize`` (as all-MiniLM-L6-v2
    does), the stage is built with ``normalize=True`` and L2-normalises its output again, because a
    residual refiner ``x + g(x)`` (or a baseline chosen by auto mode) does not keep unit length, and
    users of a normalising model rely on unit vectors (dot product = cosine, ``similarity_fn_name``).
    The flag belongs to the stage rather than to the refiner, so any fitted SimSkip model can be
    attached and the pipeline's contract still holds; re-normalising an already normalised output
    changes nothing.

    Args:
        simskip: a fitted SimSkip model; the stage applies its ``module_`` (the map ``transform`` applies).
        normalize: L2-normalise the stage's output.
        module_input_name: the features key read (default ``"sentence_embedding"``).
        module_output_name: the features key written (default: same as the input).
    """

    config_file_name: str = "simskip_stage.json"
    config_keys: list[str] = [  # noqa: RUF012 - the sentence-transformers convention
        "in_features",
        "out_features",
        "normalize",
        "module_input_name",
        "module_output_name",
    ]

    def __init__(
        self,
        simskip: SimSkip,
        *,
        normalize: bool = False,
        module_input_name: str = "sentence_embedding",
        module_output_name: str | None = None,
    ) -> None:
        super().__init__()
        module = getattr(simskip, "module_", None)
        dim = getattr(simskip, "dim_", None)
        if module is None or dim is None:
            raise ValueError(
                "SimSkipStage needs a fitted SimSkip model; call SimSkip(...).fit(embeddings) first "
                "(or use simskip_text.refine_model, which fits and appends in one call)."
            )
        self.simskip = simskip
        self.refiner = module.eval()
        self.in_features = int(dim)
        self.normalize = bool(normalize)
        self.module_input_name = module_input_name
        self.module_output_name = module_output_name if module_output_name is not None else module_input_name
        with torch.no_grad():
            probe = torch.zeros(1, self.in_features, dtype=self._dtype())
            self.out_features = int(self.refiner(probe).shape[-1])

    def _dtype(self) -> torch.dtype:
        param = next(self.refiner.parameters(), None)
        if param is None:
            param = next(self.refiner.buffers(), None)
        return param.dtype if param is not None else torch.float32

    def forward(self, features: dict[str, Tensor], **kwargs: Any) -> dict[str, Tensor]:
        """Replace ``features[module_input_name]`` (batch, in_features) by its refined version."""
        x = features[self.module_input_name]
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"the SimSkip stage was fitted on {self.in_features}-d embeddings but received "
                f"{x.shape[-1]}-d ones; attach a refiner fitted on this model's embeddings "
                "(simskip_text.refine_model(model, texts))."
            )
        out = self.refiner(x.to(self._dtype()))
        if self.normalize:
            out = F.normalize(out, p=2, dim=-1)
        features[self.module_output_name] = out.to(x.dtype)
        return features

    def get_embedding_dimension(self) -> int:
        """The output dimension of the stage (the refined embedding size)."""
        return self.out_features

    def on_model_ready(self, model: BaseModel) -> None:
        """Check, once a saved model is loaded, that the modules before this stage output ``in_features`` dims."""
        modules = list(model._modules.values())
        position = next((i for i, module in enumerate(modules) if module is self), None)
        if position is None:
            return
        previous = preceding_dimension(modules[:position])
        if previous is not None and previous != self.in_features:
            raise ValueError(
                f"this model's modules before the SimSkip stage output {previous}-d embeddings, but the stage "
                f"was fitted on {self.in_features}-d embeddings: the base model was changed after refining. "
                "Load the model the stage was fitted on, or fit a new stage with simskip_text.refine_model."
            )

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """Write the SimSkip model (config.json + model.safetensors) and ``simskip_stage.json`` to ``output_path``.

        Weights are always written as safetensors; ``safe_serialization=False`` is accepted for
        signature compatibility but never produces a pickle.
        """
        self.simskip.save(output_path, overwrite=True)
        self.save_config(output_path)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        init_defaults: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Self:
        """Restore the stage from the folder ``model_name_or_path/subfolder``.

        ``init_defaults`` is accepted for signature compatibility; the saved configuration is complete.

        Raises:
            CorruptModelError: a file of the stage is missing or unreadable (the message names it).
        """
        from simskip_core.api import SimSkip

        hub_kwargs: dict[str, Any] = {
            "token": token,
            "cache_folder": cache_folder,
            "revision": revision,
            "local_files_only": local_files_only,
        }
        folder = cls.load_dir_path(model_name_or_path, subfolder=subfolder, **hub_kwargs)
        where = os.path.join(str(model_name_or_path), subfolder)
        if folder is None or not os.path.isdir(folder):
            raise CorruptModelError(_missing_message(where, "the stage folder"))
        for name in (cls.config_file_name, *_SIMSKIP_FILES):
            if not os.path.isfile(os.path.join(folder, name)):
                raise CorruptModelError(_missing_message(where, name))
        config = cls.load_config(model_name_or_path, subfolder=subfolder, **hub_kwargs)
        try:
            simskip = SimSkip.load(folder)
        except CorruptModelError as error:
            raise CorruptModelError(
                f"the SimSkip stage saved in {where} cannot be restored: {error}"
            ) from error
        in_features = config.get("in_features")
        if in_features is not None and int(in_features) != simskip.dim_:
            raise CorruptModelError(
                f"{os.path.join(where, cls.config_file_name)} says the stage takes {in_features}-d embeddings "
                f"but the SimSkip model in the same folder was fitted on {simskip.dim_}-d ones; save the model again."
            )
        stage = cls(
            simskip,
            normalize=bool(config.get("normalize", False)),
            module_input_name=config.get("module_input_name", "sentence_embedding"),
            module_output_name=config.get("module_output_name"),
        )
        return stage


def preceding_dimension(modules: list[Any]) -> int | None:
    """The embedding dimension the last of ``modules`` that reports one outputs (as sentence-transformers computes it)."""
    for module in reversed(modules):
        for name in (
            "get_embedding_dimension",
            "get_sentence_embedding_dimension",
            "get_word_embedding_dimension",
        ):
            method = getattr(type(module), name, None)
            if callable(method):
                dim = getattr(module, name)()
                if dim is not None:
                    return int(dim)
                break
    return None


def _missing_message(where: str, name: str) -> str:
    return (
        f"the saved model's SimSkip stage is incomplete: {name} is missing in {where}. Copy the whole "
        "model folder, or save the refined model again with model.save(path); to use the base model "
        "without refinement, load the original model instead."
    )


class RefinedSentenceTransformer(SentenceTransformer):
    """A ``SentenceTransformer`` holding a :class:`SimSkipStage`, whose ``save`` writes the portable form.

    ``refine_model``, ``attach_simskip`` and ``load_refined_model`` return this class (it adds nothing
    but ``save``). ``save(path)`` (and so ``save_pretrained`` and ``push_to_hub``) writes the stage as
    sentence-transformers' own ``Dense`` modules when the fitted map has an exact Dense form, so plain
    ``SentenceTransformer(path)`` reloads it with no ``trust_remote_code``; otherwise it keeps the stage
    and logs a warning (see :func:`simskip_text.export.to_portable`). ``save(path, portable=False)``
    always writes the stage form, which reloads with :func:`simskip_text.load_refined_model`.
    """

    def save(
        self,
        path: str,
        model_name: str | None = None,
        create_model_card: bool = True,
        train_datasets: list[str] | None = None,
        safe_serialization: bool = True,
        *,
        portable: bool = True,
    ) -> None:
        """Save to ``path`` as :func:`simskip_text.save_refined_model` does; ``portable=False`` keeps the stage."""
        from simskip_text.export import save_refined_model

        save_refined_model(
            self,
            path,
            portable=portable,
            model_name=model_name,
            create_model_card=create_model_card,
            train_datasets=train_datasets,
            safe_serialization=safe_serialization,
        )


def as_refined(model: SentenceTransformer) -> SentenceTransformer:
    """Make a plain ``SentenceTransformer`` a :class:`RefinedSentenceTransformer` (in place); return it.

    A subclass of ``SentenceTransformer`` other than that one is left as it is: its ``save`` writes the
    stage form, and :func:`simskip_text.save_refined_model` writes the portable one.
    """
    if type(model) is SentenceTransformer:
        model.__class__ = RefinedSentenceTransformer
    return model
