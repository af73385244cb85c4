"""The pluggy hook specifications of simskip (project name ``simskip``).

Every hook is documented in ``docs/hooks.md``, called by the core and exercised by a test;
``tests/test_hookspecs.py`` fails when one is not. A ``firstresult`` hook stops at the first plugin
that returns something other than None; every other hook is a broadcast whose answers are all collected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pluggy

if TYPE_CHECKING:
    from simskip_core.augment import Augmentation
    from simskip_core.embeddings import EmbeddingSet
    from simskip_core.losses.base import ContrastiveLoss
    from simskip_core.selection import Probe
    from simskip_core.tasks import EvalResult, Method, Task, TaskData

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "simskip"
hookspec = pluggy.HookspecMarker(PROJECT)
#: Decorate a plugin's functions with this to implement simskip hooks.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def simskip_register_tasks(register: Callable[[Task], None]) -> None:
    """Register the plugin's benchmark tasks by calling ``register(task)`` once per :class:`Task`.

    Broadcast: every plugin is called and all the tasks they register are collected (names must be
    unique). A task carries its own behaviour: ``evaluate``, ``default_probe``, ``pair_signals`` and
    ``methods``. Called by :func:`simskip_core.plugins.all_tasks`.
    """


@hookspec(firstresult=True)
def simskip_extract_embeddings(source: Any, options: Mapping[str, Any]) -> EmbeddingSet | None:
    """Turn a host object into an :class:`EmbeddingSet`; return None when ``source`` is not yours.

    firstresult: the first non-None answer wins. ``source`` is e.g. ``{"texts": [...], "model": ...}``
    for text, a trained PyKEEN model, or a PyG ``Data``; ``options`` carries batch size, cache folder
    and progress settings. Called by :func:`simskip_core.extract`.
    """


@hookspec(firstresult=True)
def simskip_evaluate(
    task: Task, data: TaskData, train: np.ndarray, test: np.ndarray, seed: int, extras: Mapping[str, Any]
) -> EvalResult | None:
    """Score refined ``train``/``test`` vectors on ``task``'s downstream metric; None if ``task`` is not yours.

    firstresult: the first non-None answer wins. The fallback for a task that carries no
    ``evaluate`` of its own (the benchmark asks this hook only for such tasks). ``extras`` is the
    producing method's :attr:`~simskip_core.tasks.MethodOutput.extras`; an implementation may omit
    the argument.
    """


@hookspec
def simskip_pair_signals(task: Task, data: TaskData) -> Mapping[str, np.ndarray] | None:
    """Extra positive-pair signals for ``task``'s training items, each an (m, 2) array of row indices.

    Broadcast: all answers are collected and merged (names must not clash). The fallback for a task
    that carries no ``pair_signals`` of its own (the benchmark asks this hook only for such tasks).
    """


@hookspec
def simskip_task_methods(task: Task) -> Sequence[Method] | None:
    """Methods a plugin adds to ``task`` (any plugin's task), run next to the core's and the task's own.

    Broadcast: all answers are collected (method names must be unique per task). For methods that
    belong to one task, use :attr:`Task.methods <simskip_core.tasks.Task.methods>` instead.
    """


@hookspec(firstresult=True)
def simskip_default_probe(task: Task, data: TaskData) -> Probe | None:
    """The probe auto mode uses on ``task``: scores candidate train vectors on validation splits of the training items.

    firstresult: the first non-None answer wins. The fallback for a task that carries no
    ``default_probe`` of its own (the benchmark asks this hook only for such tasks).
    """


@hookspec(firstresult=True)
def simskip_attach(host: Any, model: Any) -> Any | None:
    """Put a fitted :class:`~simskip_core.api.SimSkip` model into a host object (e.g. append it to a
    sentence-transformers pipeline) and return the new host; None when ``host`` is not yours.

    firstresult: the first non-None answer wins. Called by :func:`simskip_core.attach`.
    """


@hookspec
def simskip_register_augmentations(register: Callable[[type[Augmentation]], None]) -> None:
    """Register extra :class:`~simskip_core.augment.Augmentation` classes, then resolvable by name.

    Broadcast: every plugin is called and all the classes it registers are collected.
    """


@hookspec
def simskip_register_losses(register: Callable[[type[ContrastiveLoss]], None]) -> None:
    """Register extra :class:`~simskip_core.losses.base.ContrastiveLoss` classes, then resolvable by name.

    Broadcast: every plugin is called and all the classes it registers are collected.
    """


def hook_names() -> Sequence[str]:
    """Names of every hook specification in this module."""
    return sorted(name for name in globals() if name.startswith("simskip_"))
