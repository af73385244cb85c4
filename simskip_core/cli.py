"""The ``simskip`` command: ``refine``, ``bench``, ``plugins``, ``--version``.

Everything a user can get wrong is checked before any training and reported in one line,
``simskip: error: ...``, with exit status 2; ``--traceback`` (or ``SIMSKIP_TRACEBACK=1``) shows the
Python traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from simskip_core import __version__

__all__ = ["TRACEBACK_ENV", "build_parser", "check_device", "main"]

#: Environment variable that makes ``main`` show the traceback of an error (like ``--traceback``).
TRACEBACK_ENV = "SIMSKIP_TRACEBACK"

EPILOG = """examples:
  simskip refine embeddings.npy refined.npy --epochs 30 --save-model my-refiner
  simskip refine new.npy new-refined.npy --model my-refiner
  torchrun --nproc_per_node=2 -m simskip_core refine big.npy --save-model my-refiner
  simskip bench --suite quick
  simskip plugins
"""

#: Options of ``simskip refine`` that only mean something when a model is trained, by argparse dest.
#: Each defaults to None, so that giving one together with --model can be told apart and refused.
TRAINING_FLAGS = {
    "loss": "--loss",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "seed": "--seed",
    "val_fraction": "--val-fraction",
    "patience": "--patience",
    "augment_fit_rows": "--augment-fit-rows",
    "mutual_knn": "--mutual-knn",
    "labels": "--labels",
    "pairs": "--pairs",
    "mode": "--mode",
    "normalize_output": "--normalize-output",
    "save_model": "--save-model",
    "overwrite_model": "--overwrite-model",
    "checkpoint_dir": "--checkpoint-dir",
    "resume": "--resume",
}
#: The training flags passed to ``SimSkip(...)`` under their own names (when given).
SIMSKIP_PARAMS = (
    "loss",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "val_fraction",
    "patience",
    "augment_fit_rows",
    "mutual_knn",
    "mode",
    "normalize_output",
    "resume",
)
#: The stream's messages name its Python arguments; the command's user knows the flags.
_STREAM_FLAGS = (
    # the stream's messages already name some flags in parentheses for CLI users: drop those first
    (" (--no-resume on the command line)", ""),
    (" (--overwrite)", ""),
    ("resume=True (without --no-resume and --overwrite)", "without --no-resume and --overwrite"),
    ("pass resume=False", "pass --no-resume"),
    ("run with resume=True", "run without --no-resume"),
    ("overwrite=True or resume=False", "--overwrite or --no-resume"),
    ("resume=False", "--no-resume"),
    ("resume=True", "without --no-resume"),
    ("pass overwrite=True", "pass --overwrite"),
    ("overwrite=True", "--overwrite"),
    ("pass device='cpu'", "pass --device cpu"),
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``simskip`` command."""
    parser = argparse.ArgumentParser(
        prog="simskip",
        description="Contrastive refinement (SimSkip) of frozen embeddings, with honest baselines.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"simskip {__version__}")
    parser.add_argument(
        "--traceback",
        action="store_true",
        help=f"show the Python traceback of an error instead of one line (or set {TRACEBACK_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_refine(sub)
    sub.add_parser("plugins", help="list installed simskip plugins, their distributions and tasks")
    bench = sub.add_parser("bench", help="run the cross-domain benchmark suite")
    from simskip_core import bench as bench_module

    bench_module.add_arguments(bench)
    return parser


def _add_refine(sub: Any) -> None:
    refine = sub.add_parser(
        "refine",
        help="fit a refiner on IN.npy and write refined embeddings to OUT.npy (or apply a saved model)",
        description="Fit SimSkip on the (n, d) float array in IN.npy and write f(IN) to OUT.npy. "
        "With --model, apply a saved model instead of fitting (training options are then refused). "
        "Paths are checked before any training.",
    )
    refine.add_argument(
        "input", type=Path, help="input embeddings, a .npy file holding an (n, d) float array"
    )
    refine.add_argument(
        "output",
        type=Path,
        nargs="?",
        help="where to write the refined (n, d) float32 array (.npy); may be left out with --save-model",
    )
    refine.add_argument(
        "--model", type=Path, help="apply this saved model (a folder from --save-model) instead of fitting"
    )
    refine.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    _add_training_options(refine)
    refine.add_argument(
        "--stream",
        action="store_true",
        help="write OUT chunk by chunk (memory bounded by --chunk-rows, resumable after an interruption); "
        "IN may also be a folder of .npy shards. Use with --model for inputs larger than memory.",
    )
    refine.add_argument("--chunk-rows", type=int, default=65536, help="rows per chunk with --stream")
    refine.add_argument(
        "--no-resume", action="store_true", help="with --stream: start again instead of resuming"
    )
    refine.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, ... for training and --stream (default: auto)"
    )
    refine.add_argument("--bf16", action="store_true", help="with --stream on a GPU: bf16 autocast")
    parquet = refine.add_argument_group(
        "Parquet",
        "IN may be a .parquet file or a folder of them (with --model): one output file per input "
        "file under OUT, other columns kept, resumable file by file",
    )
    parquet.add_argument("--column", default="embedding", help="the embedding column (default: embedding)")
    parquet.add_argument(
        "--out-column", default=None, help="write refined vectors here (default: replace --column)"
    )
    parquet.add_argument("--id-column", default=None, help="name bad rows by this column's values")
    parquet.add_argument("--batch-rows", type=int, default=65536, help="rows read and refined at a time")
    refine.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_training_options(refine: argparse.ArgumentParser) -> None:
    """The options of a training run; each defaults to None (SimSkip's default applies)."""
    group = refine.add_argument_group("training (not with --model)")
    group.add_argument(
        "--save-model",
        type=Path,
        help="save the fitted model to this folder (a new folder or a model folder)",
    )
    group.add_argument(
        "--overwrite-model",
        action="store_true",
        default=None,
        help="replace the --save-model folder if it holds a saved simskip model",
    )
    group.add_argument(
        "--loss", help="ntxent (default), studentt, spectral, difficulty, mscon, or a plugin's loss"
    )
    group.add_argument("--epochs", type=int, help="training epochs (default 50)")
    group.add_argument("--batch-size", type=int, help="rows per batch (default 256, capped to the rows)")
    group.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    group.add_argument("--seed", type=int, help="seed of initialisation and training (default 0)")
    group.add_argument("--val-fraction", type=float, help="rows held out for early stopping (default 0.1)")
    group.add_argument("--patience", type=int, help="epochs without improvement before stopping (default 10)")
    group.add_argument("--augment-fit-rows", type=int, help="rows sampled to fit augmentation statistics")
    group.add_argument("--mutual-knn", type=int, metavar="K", help="add label-free mutual k-NN positives")
    group.add_argument(
        "--labels", type=Path, help="(n,) int .npy of class labels, -1 = unlabelled (few-label mode)"
    )
    group.add_argument("--pairs", type=Path, help="(m, 2) int .npy of extra positive pairs (row indices)")
    group.add_argument(
        "--mode",
        choices=["refine", "auto"],
        help="refine (default) or auto: keep the identity unless a candidate beats it on a k-NN probe "
        "over --labels",
    )
    group.add_argument(
        "--normalize-output", action="store_true", default=None, help="L2-normalise the refined vectors"
    )
    group.add_argument(
        "--checkpoint-dir", type=Path, help="write a training checkpoint to this folder after every epoch"
    )
    group.add_argument(
        "--resume",
        action="store_true",
        default=None,
        help="continue training from the checkpoint in --checkpoint-dir (the same data and options)",
    )


# ---------------------------------------------------------------------------------------------- checks
def _check_options(args: argparse.Namespace) -> None:
    """Refuse combinations of options that cannot mean what the user wants."""
    if args.output is None and args.save_model is None:
        raise ValueError("give OUT (where to write the refined array) or --save-model DIR (or both).")
    if args.model is not None:
        given = [flag for dest, flag in TRAINING_FLAGS.items() if getattr(args, dest) is not None]
        if given:
            raise ValueError(
                f"--model applies a saved model and trains nothing, so {', '.join(given)} would be ignored; "
                "drop them, or drop --model to train a new model."
            )
    if args.stream and args.output is None:
        raise ValueError("--stream writes OUT chunk by chunk: give OUT.")
    if args.resume and args.checkpoint_dir is None:
        raise ValueError("--resume continues from a checkpoint: give --checkpoint-dir DIR too.")
    if args.overwrite_model and args.save_model is None:
        raise ValueError("--overwrite-model replaces the --save-model folder: give --save-model DIR too.")


def _check_input(path: Path, what: str, *, shards: bool = False) -> None:
    """``path`` is an existing file (or, with ``shards``, a folder of ``.npy`` shards)."""
    if path.is_dir():
        if shards:
            return
        hint = " (a folder of .npy shards is accepted with --stream --model)" if what == "input" else ""
        raise IsADirectoryError(f"{what} {path} is a folder; give a .npy file{hint}.")
    if not path.exists():
        raise FileNotFoundError(f"{what} file {path} does not exist.")


def _check_parent(path: Path, what: str) -> None:
    """The folder that will hold ``path`` exists and can be written to."""
    parent = path.absolute().parent
    if not parent.is_dir():
        problem = "is not a folder" if parent.exists() else "does not exist"
        raise FileNotFoundError(f"the folder of {what} {path}, {parent}, {problem}; create it first.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {what} {path}: the folder {parent} is not writable.")


def _inside(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies inside it (both resolved, so through symbolic links too)."""
    return path.resolve().is_relative_to(folder.resolve())


def _same_file(a: Path, b: Path) -> bool:
    """The same file, through symbolic or hard links."""
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))


def _inputs(args: argparse.Namespace) -> list[Path]:
    return [p for p in (args.input, args.labels, args.pairs, args.model) if p is not None]


def _check_output(args: argparse.Namespace) -> None:
    out: Path = args.output
    if out.is_dir():
        raise IsADirectoryError(f"OUT {out} is a folder; give the path of the .npy file to write.")
    for source in _inputs(args):
        if _inside(out, source) if source.is_dir() else _same_file(out, source):
            raise ValueError(
                f"OUT {out} is (or lies inside) the input {source}; writing it would overwrite the input. "
                "Choose another output path."
            )
    _check_parent(out, "OUT")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"OUT {out} exists; pass --overwrite to replace it.")


def _check_save_model(args: argparse.Namespace) -> None:
    from simskip_core.serialization import is_model_folder

    folder: Path = args.save_model
    if Path.cwd().is_relative_to(folder.resolve()):
        raise ValueError(
            f"--save-model {folder} is the current folder (or holds it); give a new folder name."
        )
    for inner in [*_inputs(args), *([args.output] if args.output is not None else [])]:
        if _inside(inner, folder):
            raise ValueError(
                f"--save-model {folder} holds {inner}, which saving the model would replace; "
                "choose another folder."
            )
    if folder.is_symlink() or folder.is_file():
        raise FileExistsError(
            f"--save-model {folder} is a file or a link, not a model folder; choose a new folder."
        )
    if folder.is_dir():
        if not is_model_folder(folder) and any(folder.iterdir()):
            raise FileExistsError(
                f"--save-model {folder} is a folder that is not a saved simskip model; simskip replaces only "
                "folders it saved. Choose a new folder."
            )
        if not args.overwrite_model:
            raise FileExistsError(f"--save-model {folder} exists; pass --overwrite-model to replace it.")
    _check_parent(folder, "--save-model")


def _check_checkpoint_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"--checkpoint-dir {path} is a file; give a folder.")
    if not path.exists():
        _check_parent(path, "--checkpoint-dir")


def check_device(device: str | None) -> None:
    """Raise ``ValueError`` (one line, naming the ``--device`` flag and the fix) for a device torch does not
    know, or a CUDA device this machine does not have; None (the default device) passes."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} was asked for but CUDA is not available; use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)."
            )


def _is_parquet(path: Path) -> bool:
    """``path`` is a Parquet file or a folder holding Parquet files."""
    if path.is_dir():
        return any(path.rglob("*.parquet"))
    return path.suffix == ".parquet"


def _check_parquet(args: argparse.Namespace) -> None:
    """Parquet input applies a saved model to a file or folder; ``refine_parquet`` checks OUT itself."""
    if args.model is None:
        raise ValueError(
            f"{args.input} is Parquet: simskip refines Parquet with a saved model. Fit one on a .npy sample "
            "(simskip refine sample.npy --save-model DIR), then pass --model DIR."
        )
    if args.output is None:
        raise ValueError("give OUT: the file (or folder, for a folder of Parquet files) to write.")
    if args.stream:
        raise ValueError("Parquet input is always streamed file by file and batch by batch; drop --stream.")
    if not args.model.is_dir():
        raise FileNotFoundError(
            f"--model {args.model} is not a folder; give a folder written by --save-model."
        )


def _check_refine(args: argparse.Namespace) -> None:
    """Every check that needs no training, so that a mistake fails at once and changes nothing."""
    _check_options(args)
    if args.input.exists() and _is_parquet(args.input):
        _check_parquet(args)
        return
    _check_input(args.input, "input", shards=args.stream and args.model is not None)
    for path, what in ((args.labels, "labels"), (args.pairs, "pairs")):
        if path is not None:
            _check_input(path, what)
    if args.model is not None and not args.model.is_dir():
        raise FileNotFoundError(
            f"--model {args.model} is not a folder; give a folder written by --save-model."
        )
    if args.output is not None:
        _check_output(args)
    if args.save_model is not None:
        _check_save_model(args)
    if args.checkpoint_dir is not None:
        _check_checkpoint_dir(args.checkpoint_dir)
    check_device(args.device)
    if args.loss is not None:
        from simskip_core.losses import loss_resolver

        loss_resolver.lookup(args.loss)  # a miss loads the plugins, then lists the valid names


# ---------------------------------------------------------------------------------------------- refine
def _load_npy(path: Path, what: str) -> np.ndarray:
    """Memory-map a ``.npy`` array; a missing or unreadable file is a one-line error."""
    _check_input(path, what)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError) as error:
        raise ValueError(f"{what} {path} is not a readable .npy array ({error}).") from error


def _refine(args: argparse.Namespace) -> int:
    """``simskip refine``; under torchrun (``RANK`` set) the process group is initialised here."""
    _check_refine(args)
    if "RANK" not in os.environ:
        return _refine_local(args, is_main=True)
    from simskip_core.scale.distributed import destroy_distributed, init_distributed

    info = init_distributed()
    try:
        return _refine_local(args, is_main=info.is_main)
    finally:
        destroy_distributed()


def _build_model(args: argparse.Namespace, *, is_main: bool) -> Any:
    """A ``SimSkip`` with the training options given on the command line (SimSkip's defaults for the rest)."""
    from simskip_core.api import SimSkip

    params = {name: getattr(args, name) for name in SIMSKIP_PARAMS if getattr(args, name) is not None}
    if args.checkpoint_dir is not None:
        params["checkpoint_dir"] = str(args.checkpoint_dir)
    return SimSkip(**params, device=args.device, progress=not args.quiet and is_main)


def _refine_parquet(args: argparse.Namespace, *, is_main: bool) -> int:
    """Apply ``--model`` to a Parquet file or folder (rank 0 only under torchrun)."""
    from simskip_core.scale.parquet import refine_parquet

    if not is_main:
        return 0
    summary = refine_parquet(
        args.model,
        args.input,
        args.output,
        column=args.column,
        out_column=args.out_column,
        id_column=args.id_column,
        batch_rows=args.batch_rows,
        overwrite=args.overwrite,
        resume=not args.no_resume,
        progress=not args.quiet,
    )
    print(json.dumps(dataclasses.asdict(summary), default=str))
    return 0


def _fit_summary(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """What a training run without OUT prints: where the model went and how training went."""
    history = model.history_
    last = history[-1] if history else {}
    summary = {
        "saved": str(args.save_model),
        "epochs": len(history),
        "train_loss": last.get("train_loss"),
        "val": last.get("val"),
        "epoch_seconds": [h.get("seconds") for h in history],
    }
    if "WORLD_SIZE" in os.environ:
        summary["world_size"] = int(os.environ["WORLD_SIZE"])
    return summary


def _refine_local(args: argparse.Namespace, *, is_main: bool) -> int:
    from simskip_core.api import SimSkip

    if _is_parquet(args.input):
        return _refine_parquet(args, is_main=is_main)
    if args.stream and args.model is not None:
        return _stream(args, SimSkip.load(args.model), is_main)
    x = _load_npy(args.input, "input")
    if args.model is not None:
        model = SimSkip.load(args.model)
    else:
        labels = None if args.labels is None else np.asarray(_load_npy(args.labels, "labels"))
        pairs = None if args.pairs is None else {"pairs": np.asarray(_load_npy(args.pairs, "pairs"))}
        model = _build_model(args, is_main=is_main).fit(x, labels=labels, pairs=pairs)
    if args.stream:
        _save_model(args, model, is_main)
        return _stream(args, model, is_main)
    refined = model.transform(x) if args.output is not None and is_main else None
    _save_model(args, model, is_main)
    if not is_main:
        return 0
    if refined is None:
        print(json.dumps(_fit_summary(args, model)))
        return 0
    _write_npy(args.output, refined)
    summary = {"output": str(args.output), "shape": list(refined.shape), "applied": model.chosen}
    if model.selection_ is not None:
        summary["selection"] = model.selection_["reason"]
    print(json.dumps(summary))
    return 0


def _save_model(args: argparse.Namespace, model: Any, is_main: bool) -> None:
    if args.save_model is not None and is_main:
        model.save(args.save_model, overwrite=bool(args.overwrite_model))


def _write_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` through a temporary file in the same folder, removed on failure."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as handle:  # "x": never an existing file; the mode follows the umask
            np.save(handle, array)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _stream(args: argparse.Namespace, model: object, is_main: bool) -> int:
    from simskip_core.scale.stream import stream_apply_from_args

    with _stream_flags():
        summary = stream_apply_from_args(model, args)
    if is_main:
        print(json.dumps(summary))
    return 0


@contextmanager
def _stream_flags() -> Iterator[None]:
    """Rewrite the stream's messages, which name ``stream_apply``'s arguments, in terms of the flags."""
    try:
        yield
    except Exception as error:
        if len(error.args) == 1 and isinstance(error.args[0], str):
            message = error.args[0]
            for python, flag in _STREAM_FLAGS:
                message = message.replace(python, flag)
            error.args = (message,)
        raise


# ---------------------------------------------------------------------------------------------- plugins
def _plugins() -> int:
    """``simskip plugins``: a table of the plugins, then one line per plugin left out, then the tasks."""
    from rich.console import Console
    from rich.table import Table

    from simskip_core.plugins import all_tasks, installed_plugins

    rows = installed_plugins()
    table = Table(title="simskip plugins")
    for column in ("name", "module", "distribution", "status"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["module"], row["distribution"], row["status"].split(" (")[0])
    console = Console()
    console.print(table)
    for row in rows:
        if row["status"] not in {"loaded", "registered at run time"}:
            console.print(
                f"{row['name']} ({row['distribution']}): {row['status']}", soft_wrap=True, markup=False
            )
    tasks = all_tasks()
    console.print(f"{len(tasks)} benchmark task(s): " + ", ".join(tasks), soft_wrap=True)
    return 0


# ---------------------------------------------------------------------------------------------- main
def _expected_errors() -> tuple[type[BaseException], ...]:
    """The errors a user's mistake or the machine can cause: reported in one line, not a traceback."""
    from simskip_core.errors import SimSkipError

    return (ValueError, TypeError, KeyError, OSError, SimSkipError)


def _one_line(error: BaseException) -> str:
    """The error's message on one line (a ``KeyError``'s without the quotes ``str`` adds)."""
    text = error.args[0] if isinstance(error, KeyError) and len(error.args) == 1 else error
    return " ".join(str(text).split()) or type(error).__name__


def _show_traceback(args: argparse.Namespace) -> bool:
    env = os.environ.get(TRACEBACK_ENV, "").strip().lower()
    return bool(args.traceback) or env not in {"", "0", "false", "no"}


def _run(args: argparse.Namespace) -> int:
    if args.command == "refine":
        return _refine(args)
    if args.command == "plugins":
        return _plugins()
    from simskip_core import bench as bench_module

    return int(bench_module.main(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``simskip`` console script.

    Returns the exit status: 0 on success, 2 for an error (reported as one line
    ``simskip: error: ...`` unless ``--traceback`` or ``SIMSKIP_TRACEBACK=1`` asks for the traceback),
    1 when ``simskip bench`` ran but a task or cell failed.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _run(args)
    except _expected_errors() as error:
        if _show_traceback(args):
            raise
        print(f"simskip: error: {_one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
