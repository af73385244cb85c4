"""PyKEEN datasets by name, built from their triples files and never from PyKEEN's dataset cache.

``pykeen.datasets.get_dataset("nations")`` keeps a preprocessed copy of each dataset under
``~/.data/pykeen/datasets/<name>/cache/`` and reads it back with ``torch.load`` and ``weights_only`` off,
which runs any code a tampered cache file carries. :func:`load_dataset` instead instantiates the
dataset's class, which reads the plain-text triples files: for Nations, Kinships and UMLS the files
that ship inside the pykeen package (offline), for other file-based datasets the files PyKEEN
downloads. The splits and id mappings are PyKEEN's own (same files, same code path as an uncached
``get_dataset``); nothing is unpickled and no cache is written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simskip_kg.errors import KGInputError

if TYPE_CHECKING:
    from pykeen.datasets import Dataset

__all__ = ["SHIPPED_DATASETS", "load_dataset"]

#: The datasets whose triples files ship inside the pykeen package (no download).
SHIPPED_DATASETS: tuple[str, ...] = ("kinships", "nations", "umls")


def load_dataset(name: str) -> Dataset:
    """The PyKEEN dataset ``name`` (e.g. ``"nations"``), read from its triples files, never from a pickle.

    Raises:
        KGInputError: an unknown name, a dataset PyKEEN does not build from triples files (build it
            yourself and pass the ``Dataset``), or files that cannot be read or downloaded.
    """
    from pykeen.datasets import dataset_resolver
    from pykeen.datasets.base import PathDataset

    try:
        cls = dataset_resolver.lookup(name)
    except (KeyError, ValueError) as error:
        raise KGInputError(
            f"unknown PyKEEN dataset {name!r}; {', '.join(SHIPPED_DATASETS)} ship inside pykeen and work offline."
        ) from error
    if not issubclass(cls, PathDataset):
        raise KGInputError(
            f"simskip_kg builds datasets by name only from their triples files, and PyKEEN's {cls.__name__} is "
            "not built that way; build it yourself with pykeen and pass the Dataset instance."
        )
    try:
        dataset: Dataset = cls()  # type: ignore[call-arg]  # the subclasses name their own files
        dataset.validation  # noqa: B018 - loads every split now, so a missing file fails here
    except Exception as error:  # pykeen raises OSError offline, ValueError on malformed files
        raise KGInputError(
            f"could not read PyKEEN dataset {name!r} ({type(error).__name__}: {error}); "
            f"{', '.join(SHIPPED_DATASETS)} ship inside pykeen and work offline, others need a download."
        ) from error
    return dataset
