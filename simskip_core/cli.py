"""The ``simskip`` command: ``refine``, ``bench``, ``plugins``, ``--version``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from simskip_core import __version__

__all__ = ["build_parser", "main"]

EPILOG = """examples:
  simskip refine embeddings.npy refined.npy --epochs 30 --save-model my-refiner
  simskip refine new.npy new-refined.npy --model my-refiner
  torchrun --nproc_per_node=2 -m simskip_core refine big.npy --save-model my-refiner
  simskip bench --suite quick
  simskip plugins
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``simskip`` command."""
    parser = argparse.ArgumentParser(
        prog="simskip",
        description="Contrastive refinement (SimSkip) of frozen embeddings, with honest baselines.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"simskip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    refine = sub.add_parser(
        "refine",
        help="fit a refiner on IN.npy and write refined embeddings to OUT.npy (or apply a saved model)",
        description="Fit SimSkip on the (n, d) float array in IN.npy and write f(IN) to OUT.npy. "
        "With --model, apply a saved model instead of fitting.",
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
    refine.add_argument("--save-model", type=Path, help="save the fitted model to this folder")
    refine.add_argument(
        "--overwrite", action="store_true", help="replace OUT and the --save-model folder if they exist"
    )
    refine.add_argument(
        "--loss", default="ntxent", help="ntxent (default), studentt, spectral, difficulty, mscon"
    )
    refine.add_argument("--epochs", type=int, default=50)
    refine.add_argument("--batch-size", type=int, default=256)
    refine.add_argument("--lr", type=float, default=1e-3)
    refine.add_argument("--seed", type=int, default=0)
    refine.add_argument("--val-fraction", type=float, default=0.1, help="rows held out for early stopping")
    refine.add_argument("--patience", type=int, default=10, help="epochs without improvement before stopping")
    refine.add_argument(
        "--augment-fit-rows", type=int, default=None, help="rows sampled to fit augmentation statistics"
    )
    refine.add_argument(
        "--mutual-knn", type=int, default=None, metavar="K", help="add label-free mutual k-NN positives"
    )
    refine.add_argument(
        "--labels", type=Path, help="(n,) int .npy of class labels, -1 = unlabelled (few-label mode)"
    )
    refine.add_argument("--pairs", type=Path, help="(m, 2) int .npy of extra positive pairs (row indices)")
    refine.add_argument(
        "--mode",
        choices=["refine", "auto"],
        default="refine",
        help="auto: keep the identity unless a candidate beats it on a k-NN probe over --labels",
    )
    refine.add_argument("--normalize-output", action="store_true", help="L2-normalise the refined vectors")
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

    refine.add_argument("--quiet", action="store_true", help="no progress bar")

    sub.add_parser("plugins", help="list installed simskip plugins and their tasks")

    bench = sub.add_parser("bench", help="run the cross-domain benchmark suite")
    from simskip_core import bench as bench_module

    bench_module.add_arguments(bench)
    return parser


def _load_npy(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise SystemExit(f"simskip: {what} file {path} does not exist.")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        raise SystemExit(f"simskip: {path} is not a readable .npy array ({error}).") from error


def _refine(args: argparse.Namespace) -> int:
    """``simskip refine``; under torchrun (``RANK`` set) the process group is initialised here."""
    if "RANK" not in os.environ:
        return _refine_local(args, is_main=True)
    from simskip_core.scale.distributed import destroy_distributed, init_distributed

    info = init_distributed()
    try:
        return _refine_local(args, is_main=info.is_main)
    finally:
        destroy_distributed()


def _refine_local(args: argparse.Namespace, *, is_main: bool) -> int:
    import dataclasses

    from simskip_core.api import SimSkip

    if args.output is None and args.save_model is None:
        raise ValueError("give OUT (where to write the refined array) or --save-model DIR (or both).")
    if args.output is not None and args.output.exists() and not args.overwrite:
        raise FileExistsError(f"{args.output} exists; pass --overwrite to replace it.")
    if args.stream and args.model is not None:
        return _stream(args, SimSkip.load(args.model), is_main)
    x = _load_npy(args.input, "input")
    if args.model is not None:
        model = SimSkip.load(args.model)
    else:
        labels = None if args.labels is None else np.asarray(_load_npy(args.labels, "labels"))
        pairs = None if args.pairs is None else {"pairs": np.asarray(_load_npy(args.pairs, "pairs"))}
        model = SimSkip(
            loss=args.loss,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            val_fraction=args.val_fraction,
            patience=args.patience,
            mutual_knn=args.mutual_knn,
            mode=args.mode,
            normalize_output=args.normalize_output,
            progress=not args.quiet and is_main,
        )
        model.train_config = dataclasses.replace(
            model.train_config, augment_fit_rows=args.augment_fit_rows, device=args.device
        )
        model.fit(x, labels=labels, pairs=pairs)
        if args.save_model is not None and is_main:
            model.save(args.save_model, overwrite=args.overwrite)
    if args.output is None:
        if is_main:
            print(json.dumps({"saved": str(args.save_model), "epochs": len(model.history_)}))
        return 0
    if args.stream:
        return _stream(args, model, is_main)
    if not is_main:
        return 0
    refined = model.transform(x)
    tmp = args.output.with_name(args.output.name + ".tmp.npy")
    np.save(tmp, refined)
    tmp.replace(args.output)
    summary = {"output": str(args.output), "shape": list(refined.shape), "applied": model.chosen}
    if model.selection_ is not None:
        summary["selection"] = model.selection_["reason"]
    print(json.dumps(summary))
    return 0


def _stream(args: argparse.Namespace, model: object, is_main: bool) -> int:
    from simskip_core.scale.stream import stream_apply_from_args

    summary = stream_apply_from_args(model, args)
    if is_main:
        print(json.dumps(summary))
    return 0


def _plugins() -> int:
    from rich.console import Console
    from rich.table import Table

    from simskip_core.plugins import all_tasks, installed_plugins

    table = Table(title="simskip plugins")
    for column in ("name", "module", "status"):
        table.add_column(column)
    for row in installed_plugins():
        table.add_row(row["name"], row["module"], row["status"])
    console = Console()
    console.print(table)
    tasks = all_tasks()
    console.print(f"{len(tasks)} benchmark task(s): " + ", ".join(tasks))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``simskip`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "refine":
            return _refine(args)
        if args.command == "plugins":
            return _plugins()
        from simskip_core import bench as bench_module

        return bench_module.main(args)
    except (ValueError, TypeError, FileExistsError, FileNotFoundError) as error:
        print(f"simskip: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
