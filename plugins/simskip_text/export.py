"""Portable export: a refined model that plain ``SentenceTransformer(path)`` reloads, no custom code.

The default refiner f(x) = x + alpha * g(x) with g = Linear(W2, b2) . ReLU . Linear(W1, b1) (depth 2,
no norm; dropout is off at inference) is exactly a pair of sentence-transformers ``Dense`` modules,
because relu(x) - relu(-x) = x carries the skip connection through the ReLU::

    Dense(d -> h + 2d, ReLU)       weight [W1; I; -I]         bias [b1; 0; 0]
    Dense(h + 2d -> d, Identity)   weight [a*W2, I, -I]       bias a*b2
    Normalize()                    when the refiner or the stage L2-normalises

:func:`to_portable` swaps a model's :class:`~simskip_text.module.SimSkipStage` for these modules;
:func:`save_refined_model`, and so ``refined.save(path)`` of the model ``refine_model`` returns, saves
that form by default, with a model card that names the refinement.
A fitted map that is not such a refiner (another activation, a norm layer, depth != 2, a baseline or the
identity chosen by auto mode) keeps the SimSkip stage, and a warning says so: that folder then needs
:func:`simskip_text.load_refined_model`.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from simskip_core.errors import MissingDataError
from simskip_core.refiner import SkipRefiner

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Module

    from simskip_core.api import SimSkip

__all__ = [
    "CARD_SECTION_TITLE",
    "SIMSKIP_TAG",
    "describe_refinement",
    "portable_blocker",
    "portable_modules",
    "restore_card",
    "save_refined_model",
    "to_portable",
]

logger = logging.getLogger(__name__)

#: Tag written into the model card of every refined model.
SIMSKIP_TAG = "simskip"
#: Heading of the section :func:`save_refined_model` appends to the model card (README.md).
CARD_SECTION_TITLE = "## SimSkip refinement"


def portable_blocker(module: nn.Module) -> str | None:
    """Why ``module`` cannot be written as built-in ``Dense`` modules, or None when it can."""
    if not isinstance(module, SkipRefiner):
        return (
            f"the fitted map is {type(module).__name__}, not a SkipRefiner "
            "(auto mode chose the identity or a baseline)"
        )
    if module.activation != "relu":
        return f"the refiner's activation is {module.activation!r}; only 'relu' has an exact Dense form"
    if module.norm != "none":
        return f"the refiner has {module.norm!r} norm layers, which Dense cannot express"
    if module.depth != 2:
        return f"the refiner has depth {module.depth}; the Dense form covers depth 2"
    return None


def portable_modules(
    refiner: SkipRefiner,
    *,
    normalize: bool = False,
    module_input_name: str = "sentence_embedding",
    module_output_name: str | None = None,
) -> list[Module]:
    """``Dense``, ``Dense`` (and ``Normalize``) modules that compute ``refiner`` (see the module docstring).

    Args:
        refiner: a depth-2, ReLU, norm-free :class:`~simskip_core.refiner.SkipRefiner`.
        normalize: L2-normalise the output even when the refiner does not (a stage's ``normalize``).
        module_input_name: the features key read.
        module_output_name: the features key written (default: the input key).

    Raises:
        ValueError: the refiner has no exact Dense form (the message says why).
    """
    from sentence_transformers.base.modules import Dense, Normalize

    blocker = portable_blocker(refiner)
    if blocker is not None:
        raise ValueError(f"no portable export: {blocker}; keep the SimSkip stage (SimSkipStage).")
    first, last = refiner.g[0], refiner.g[-1]
    assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
    output = module_output_name or module_input_name
    with torch.no_grad():
        w1, b1 = first.weight.detach().float(), first.bias.detach().float()
        w2, b2 = last.weight.detach().float(), last.bias.detach().float()
        d, h = refiner.dim, w1.shape[0]
        eye = torch.eye(d)
        alpha = float(refiner.residual_scale)
        up = torch.cat([w1, eye, -eye], dim=0)
        up_bias = torch.cat([b1, torch.zeros(2 * d)])
        down = torch.cat([w2 * alpha if alpha != 1.0 else w2, eye, -eye], dim=1)
        down_bias = b2 * alpha if alpha != 1.0 else b2
    modules: list[Module] = [
        Dense(
            d,
            h + 2 * d,
            activation_function=nn.ReLU(),
            init_weight=up.clone(),
            init_bias=up_bias.clone(),
            module_input_name=module_input_name,
            module_output_name=output,
        ),
        Dense(
            h + 2 * d,
            d,
            activation_function=nn.Identity(),
            init_weight=down.clone(),
            init_bias=down_bias.clone(),
            module_input_name=output,
        ),
    ]
    if normalize or refiner.normalize_output:
        modules.append(Normalize(module_input_name=output))
    return modules


def _stage_position(model: SentenceTransformer) -> int | None:
    from simskip_text.refine import find_stage

    return find_stage(model)


def to_portable(model: SentenceTransformer) -> SentenceTransformer:
    """A copy of ``model`` whose SimSkip stage is replaced by built-in ``Dense`` modules.

    When the stage's map has no exact Dense form (see :func:`portable_blocker`) the copy keeps the stage
    and a warning names the reason; a model without a stage is copied unchanged. ``model`` is untouched.
    """
    position = _stage_position(model)
    target = copy.deepcopy(model)
    if position is None:
        return target
    from simskip_text.module import SimSkipStage

    stage = list(target._modules.values())[position]
    assert isinstance(stage, SimSkipStage)
    blocker = portable_blocker(stage.refiner)
    if blocker is not None:
        logger.warning(
            "keeping the SimSkip stage (SimSkipStage) in the export: %s. Reload the saved folder with "
            "simskip_text.load_refined_model(path); plain SentenceTransformer(path) cannot load it.",
            blocker,
        )
        return target
    assert isinstance(stage.refiner, SkipRefiner)
    replacement = portable_modules(
        stage.refiner,
        normalize=stage.normalize,
        module_input_name=stage.module_input_name,
        module_output_name=stage.module_output_name,
    )
    del target[position]
    for offset, module in enumerate(replacement):
        target.insert(position + offset, module)
    return target


def _weights_digest(simskip: SimSkip) -> str:
    digest = hashlib.sha256()
    module = simskip.module_
    if module is not None:
        for key, tensor in module.state_dict().items():
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:10]


def _base_name(model: SentenceTransformer) -> str:
    from simskip_text.extract import DEFAULT_MODEL_NAME, default_model_path

    card = model.model_card_data
    named = card.base_model or card.model_name or card.model_id
    if named:
        return str(named)
    transformer = getattr(model, "transformers_model", None)
    path = getattr(getattr(transformer, "config", None), "_name_or_path", "") or ""
    try:
        if path and Path(path).resolve() == default_model_path().resolve():
            return DEFAULT_MODEL_NAME
    except (MissingDataError, OSError):  # the shipped model is absent: fall back to the path
        logger.debug("could not compare %s with the shipped model path", path)
    return path or "unknown-base-model"


def describe_refinement(model: SentenceTransformer, simskip: SimSkip, *, base: str | None = None) -> None:
    """Set ``model.model_card_data`` for a refined model: a name of its own, the base model, the ``simskip`` tag.

    The name is ``simskip/<base name>-simskip-<10 hex of the map's weights>``, so two refinements never
    share a name (MTEB's result cache keys on it) and none shares the base model's.
    """
    base_name = base or _base_name(model)
    card = model.model_card_data
    card.base_model = base_name
    card.model_name = f"simskip/{base_name.rsplit('/', 1)[-1]}-simskip-{_weights_digest(simskip)}"
    card.add_tags([SIMSKIP_TAG])
    model._model_card_text = None  # the base model's own card would describe the base model: generate one
    model._simskip_card = _card_section(base_name, simskip)  # type: ignore[assignment]


def _card_section(base: str, simskip: SimSkip) -> str:
    module = simskip.module_
    config = module.config() if isinstance(module, SkipRefiner) else {"map": type(module).__name__}
    lines = [
        "",
        CARD_SECTION_TITLE,
        "",
        f"This model is [{base}](https://huggingface.co/{base}) followed by a SimSkip refinement stage "
        "(arXiv 2404.08701): a residual map f(x) = x + alpha * g(x) fitted with a contrastive loss on the base "
        "model's embeddings of an unlabelled corpus, by the `simskip` package. The base model's weights are unchanged.",
        "",
        f"- SimSkip mode: `{simskip.mode}`, loss: `{_loss_label(simskip.loss)}`, chosen map: `{simskip.chosen}`",
        f"- refiner: `{config}`",
        f"- epochs run: {len(simskip.history_ or [])}",
        "",
        "When the refiner is a depth-2 ReLU MLP it is stored as two `Dense` modules (relu(x) - relu(-x) = x "
        "carries the skip), and `SentenceTransformer(path)` loads it with no custom code; otherwise the folder "
        "holds a `SimSkipStage` and loads with `simskip_text.load_refined_model(path)`.",
        "",
    ]
    return "\n".join(lines)


def restore_card(model: SentenceTransformer, folder: str | Path) -> None:
    """Set ``model.model_card_data``'s name, base model and tag from a refined folder's README.md.

    sentence-transformers does not read them back on load; :func:`simskip_text.load_refined_model`
    calls this so the reloaded model keeps its own name (MTEB reads it). A README without the
    ``simskip`` tag changes nothing.
    """
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return
    text = readme.read_text(encoding="utf-8", errors="replace")
    if f"- {SIMSKIP_TAG}\n" not in text.split("\n---", 1)[0]:
        return
    card = model.model_card_data
    for line in text.splitlines():
        if line.startswith("base_model: ") and not card.base_model:
            card.base_model = line.removeprefix("base_model: ").strip()
        elif line.startswith("# "):
            card.model_name = line.removeprefix("# ").strip()
            break
    card.add_tags([SIMSKIP_TAG])


def _loss_label(loss: object) -> str:
    return loss if isinstance(loss, str) else type(loss).__name__


def save_refined_model(
    model: SentenceTransformer, path: str | Path, *, portable: bool = True, **save_kwargs: Any
) -> Path:
    """Save a refined model to ``path``; by default in the portable form :func:`to_portable` builds.

    ``refined.save(path)`` calls this for the models ``refine_model``, ``attach_simskip`` and
    ``load_refined_model`` return (:class:`~simskip_text.module.RefinedSentenceTransformer`).

    The model card (README.md) gets the ``simskip`` tag, a model name distinct from the base model's
    and a section on how the model was refined (when the model came from ``refine_model`` or
    ``attach_simskip``).

    Args:
        model: a model holding a SimSkip stage (``refine_model``'s result).
        path: the folder to write (sentence-transformers' own ``save``).
        portable: replace the stage by ``Dense`` modules when the map allows it; False keeps the stage.
        **save_kwargs: passed to ``SentenceTransformer.save``.

    Returns:
        The folder written.
    """
    from sentence_transformers import SentenceTransformer

    folder = Path(path).expanduser()
    target = to_portable(model) if portable else model
    section = getattr(model, "_simskip_card", None)
    SentenceTransformer.save(target, str(folder), **save_kwargs)  # the base class's: no recursion
    readme = folder / "README.md"
    if section and readme.is_file():
        with readme.open("a", encoding="utf-8") as handle:
            handle.write(section)
    return folder
