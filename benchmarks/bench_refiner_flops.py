"""How close does the refiner get to the machine's GEMM rate? (issue 2's performance benchmark)

In one run, interleaved so that a busy machine slows both sides alike:

1. the machine's ``torch.matmul`` rate at the refiner's own shapes: exactly the matrix products of one
   training step (forward, gradient of the weights, gradient of the inputs, for both views, plus the
   similarity matrix of the loss), and of the forward pass of one apply chunk / block;
2. the refiner's achieved rate, counting FLOPs from the layer sizes:
   * training: ``fit_refiner`` itself (augmentations, masks, NT-Xent, AdamW included) on n rows,
     one epoch, time from its history;
   * applying: the in-memory forward pass in 65,536-row chunks and in 8,192-row blocks (as
     ``SimSkip.transform`` and ``stream_apply`` compute on the CPU), and ``stream_apply`` from a ``.npy``
     file to a ``.npy`` file (its reads, writes and fdatasync included).

FLOP count of a linear layer (in -> out) on m rows: forward 2·m·in·out, weight gradient 2·m·in·out,
input gradient 2·m·in·out (skipped for g's first layer, whose input is data). NT-Xent adds the
(2B x k) @ (k x 2B) similarity product: 2·(2B)²·k forward and 2·2·(2B)²·k backward.

Targets: training >= 40 % of the matmul rate, applying >= 70 % (on the CPU). With ``--device cuda`` every
side runs on the GPU (timed after ``torch.cuda.synchronize``); the apply rates then include the
host-to-GPU copies and the copy back, as ``SimSkip.transform`` and ``stream_apply`` pay them, while the
matmul rate does not, so their ratios say how much the transfers cost rather than how well the GEMMs run.

    python benchmarks/bench_refiner_flops.py                 # d=384, batch 512 (defaults)
    python benchmarks/bench_refiner_flops.py --quick         # smaller, for a smoke test
    python benchmarks/bench_refiner_flops.py --device cuda   # the same on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from simskip_core.augment import build_augmentation
from simskip_core.cli import check_device
from simskip_core.losses import NTXentLoss
from simskip_core.refiner import SkipRefiner
from simskip_core.scale.stream import CPU_BLOCK_ROWS, stream_apply
from simskip_core.train import TrainConfig, fit_refiner

AUGMENT = [("mask", {"keep_prob": 0.8}), ("noise", {"scale": 0.5})]


def linear_shapes(refiner: SkipRefiner) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(in, out) of g's and the projector's linear layers."""
    g = [(m.in_features, m.out_features) for m in refiner.g if isinstance(m, torch.nn.Linear)]
    p = [(m.in_features, m.out_features) for m in refiner.projector if isinstance(m, torch.nn.Linear)]
    return g, p


def train_gemms(refiner: SkipRefiner, batch: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matrix product of one training step (m x k @ k x n)."""
    g, p = linear_shapes(refiner)
    gemms: list[tuple[int, int, int]] = []
    for _view in range(2):
        for i, (fan_in, fan_out) in enumerate(g + p):
            gemms.append((batch, fan_in, fan_out))  # forward
            gemms.append((fan_in, batch, fan_out))  # weight gradient: X^T @ dY
            if i > 0:
                gemms.append((batch, fan_out, fan_in))  # input gradient: dY @ W
    k, rows = p[-1][1], 2 * batch
    gemms += [(rows, k, rows), (rows, rows, k), (rows, rows, k)]  # z z^T forward; two backward products
    return gemms


def apply_gemms(refiner: SkipRefiner, rows: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of the forward pass of g on ``rows`` rows."""
    g, _ = linear_shapes(refiner)
    return [(rows, fan_in, fan_out) for fan_in, fan_out in g]


def flops(gemms: list[tuple[int, int, int]]) -> float:
    """2·m·k·n summed."""
    return float(sum(2 * m * k * n for m, k, n in gemms))


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (a no-op on the CPU), so that a clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(gemms: list[tuple[int, int, int]], device: torch.device, seconds: float = 2.0) -> float:
    """GFLOP/s of plain torch.matmul running exactly these products (operands preallocated on ``device``)."""
    operands = [
        (torch.randn(m, k, device=device), torch.randn(k, n, device=device), torch.empty(m, n, device=device))
        for m, k, n in gemms
    ]
    for a, b, c in operands:
        torch.matmul(a, b, out=c)
    sync(device)
    reps, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < seconds:
        for a, b, c in operands:
            torch.matmul(a, b, out=c)
        sync(device)
        reps += 1
    return reps * flops(gemms) / (time.perf_counter() - tic) / 1e9


def train_rate(x: np.ndarray, dim: int, batch: int, device: torch.device) -> float:
    """GFLOP/s achieved by fit_refiner (one epoch, no validation), FLOPs counted from layer sizes."""
    torch.manual_seed(0)
    refiner = SkipRefiner(dim)
    config = TrainConfig(
        epochs=1, batch_size=batch, val_fraction=0.0, patience=None, progress=False, device=str(device)
    )
    history = fit_refiner(x, refiner, NTXentLoss(), build_augmentation(AUGMENT), [], config)
    steps = x.shape[0] // batch  # fit_refiner keeps a final short batch; count only full ones below
    step_flops = flops(train_gemms(refiner, batch))
    tail = x.shape[0] - steps * batch
    total = steps * step_flops + (flops(train_gemms(refiner, tail)) if tail >= 2 else 0.0)
    return total / history[0]["seconds"] / 1e9


def apply_rate(refiner: SkipRefiner, x: np.ndarray, chunk: int, device: torch.device) -> float:
    """GFLOP/s of the in-memory chunked forward pass (what SimSkip.transform does), from host rows to
    host rows: on a GPU each chunk is copied there and its output back (both no-ops on the CPU)."""
    sync(device)
    tic = time.perf_counter()
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            refiner(torch.from_numpy(x[start : start + chunk]).to(device)).cpu()
    return flops(apply_gemms(refiner, x.shape[0])) / (time.perf_counter() - tic) / 1e9


def stream_rate(
    refiner: SkipRefiner, path: Path, out: Path, rows: int, chunk: int, device: torch.device
) -> float:
    """GFLOP/s of stream_apply from a .npy file to a .npy file."""
    result = stream_apply(refiner, path, out, chunk_rows=chunk, overwrite=True, progress=False, device=device)
    return flops(apply_gemms(refiner, rows)) / result.seconds / 1e9


def median_of(fn: Callable[[], float], repeats: int) -> list[float]:
    """``repeats`` measurements of ``fn``."""
    return [fn() for _ in range(repeats)]


def main() -> None:
    """Run the benchmark and print a JSON report plus a short table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--train-rows", type=int, default=512 * 24)
    parser.add_argument("--apply-rows", type=int, default=262144)
    parser.add_argument(
        "--chunk", type=int, default=65536, help="rows per chunk (SimSkip.transform's and the stream's)"
    )
    parser.add_argument(
        "--block", type=int, default=None, help="rows per CPU block (default: stream's CPU_BLOCK_ROWS)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke test")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    args = parser.parse_args()
    try:
        check_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    device = torch.device(args.device)
    if args.quick:
        args.train_rows, args.apply_rows, args.chunk, args.repeats = 512 * 4, 32768, 8192, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    rng = np.random.default_rng(0)
    x_train = rng.standard_normal((args.train_rows, args.dim), dtype=np.float32)
    x_apply = rng.standard_normal((args.apply_rows, args.dim), dtype=np.float32)
    torch.manual_seed(0)
    refiner = SkipRefiner(args.dim).eval()
    torch.nn.init.normal_(refiner.g[-1].weight, std=0.02)
    refiner.to(device)
    block = args.block or CPU_BLOCK_ROWS
    tgemms, agemms, bgemms = (
        train_gemms(refiner, args.batch),
        apply_gemms(refiner, args.chunk),
        apply_gemms(refiner, block),
    )

    names = ("mm_train", "train", "mm_apply", "apply", "mm_apply_block", "apply_block", "stream")
    results: dict[str, list[float]] = {k: [] for k in names}
    with tempfile.TemporaryDirectory(prefix="simskip-flops-") as tmp:
        path, out = Path(tmp) / "x.npy", Path(tmp) / "out.npy"
        np.save(path, x_apply)
        for _ in range(args.repeats):  # interleaved: load changes hit both sides of each ratio
            results["mm_train"].append(matmul_rate(tgemms, device))
            results["train"].append(train_rate(x_train, args.dim, args.batch, device))
            results["mm_apply"].append(matmul_rate(agemms, device))
            results["apply"].append(apply_rate(refiner, x_apply, args.chunk, device))
            results["mm_apply_block"].append(matmul_rate(bgemms, device))
            results["apply_block"].append(apply_rate(refiner, x_apply, block, device))
            results["stream"].append(stream_rate(refiner, path, out, args.apply_rows, args.chunk, device))
    med = {k: statistics.median(v) for k, v in results.items()}
    report = {
        "dim": args.dim,
        "batch": args.batch,
        "chunk": args.chunk,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "train_step_gflop": flops(tgemms) / 1e9,
        "gflops": {k: [round(v, 2) for v in vals] for k, vals in results.items()},
        "median_gflops": {k: round(v, 2) for k, v in med.items()},
        "ratio_train": round(med["train"] / med["mm_train"], 3),
        "cpu_block_rows": block,
        "ratio_apply_in_memory": round(med["apply"] / med["mm_apply"], 3),
        "ratio_apply_in_memory_blocks": round(med["apply_block"] / med["mm_apply_block"], 3),
        "ratio_apply_stream": round(med["stream"] / med["mm_apply_block"], 3),
    }
    print(json.dumps(report, indent=2))
    print(
        f"\ntrain: {med['train']:.1f} GFLOP/s = {report['ratio_train']:.0%} of matmul at its shapes "
        f"({med['mm_train']:.1f}); target >= 40%"
    )
    print(
        f"apply, {args.chunk}-row chunks in memory: {med['apply']:.1f} GFLOP/s = "
        f"{report['ratio_apply_in_memory']:.0%} of matmul at its shapes ({med['mm_apply']:.1f}); target >= 70%"
    )
    print(
        f"apply, {block}-row blocks in memory (as SimSkip.transform and stream_apply compute): {med['apply_block']:.1f} GFLOP/s = "
        f"{report['ratio_apply_in_memory_blocks']:.0%}; stream_apply file to file: {med['stream']:.1f} GFLOP/s = "
        f"{report['ratio_apply_stream']:.0%} of matmul at the block shapes ({med['mm_apply_block']:.1f}); target >= 70%"
    )


if __name__ == "__main__":
    main()
