"""Deprecated alias of :mod:`simskip_core.scale.distributed` (moved in 0.2; removed in the release after).

``python -m simskip_core.distributed {train,apply} ...`` still runs, translated to the new entry
``python -m simskip_core refine ...`` (train: ``refine IN --save-model DIR``; apply: ``refine IN OUT
--model DIR --stream``).
"""

import sys

from simskip_core.lazy import deprecated_alias


def _translate(argv: list[str]) -> list[str]:
    """The ``simskip refine`` arguments of an old ``train`` / ``apply`` command line."""
    if not argv or argv[0] not in ("train", "apply"):
        raise SystemExit("usage: python -m simskip_core refine ... (this entry point is deprecated)")
    return ["refine", *argv[1:], *(["--stream"] if argv[0] == "apply" else [])]


if __name__ == "__main__":
    import warnings

    from simskip_core.cli import main

    warnings.warn(
        "python -m simskip_core.distributed is deprecated; use torchrun ... -m simskip_core refine ...",
        DeprecationWarning,
        stacklevel=1,
    )
    sys.exit(main(_translate(sys.argv[1:])))
else:
    deprecated_alias(__name__, "simskip_core.scale.distributed")
