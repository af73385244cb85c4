"""Scale benchmark (issue 8): streaming apply of a 5,000,000 x 384 float32 file, and training on 1 vs 2 ranks.

Apply (``apply``): writes a random (rows, dim) float32 .npy (7.7 GB at the defaults) under ``--dir``,
then runs three passes over it, each in a fresh child process whose peak RSS is read from the kernel
(``wait4``):

* ``matmul``: the plain chunked ``torch.matmul`` pass: read a chunk, multiply by one d x d matrix,
  write the chunk to an output .npy; single-threaded I/O, no manifest, no prefetch;
* ``matmul_flop_matched``: the same loop doing the refiner's own matrix products as plain torch ops
  (x + relu(x W1 + b1) W2 + b2), i.e. the same FLOPs as the refiner;
* ``stream``: ``simskip_core.scale.stream.stream_apply`` with a fitted-shape refiner (crash-safe manifest,
  fdatasync per chunk, prefetch and write-behind threads).

Targets: ``stream`` peak RSS < 1.5 GB and throughput >= 70 % of ``matmul``.

Train (``train``): ``torchrun --nproc_per_node=1`` vs ``--nproc_per_node=2`` of
``torchrun ... -m simskip_core refine IN --save-model DIR`` on the same data, global batch and seed; rows/s of the
last epoch, and the largest weight difference between the two saved models.

    python benchmarks/bench_scale.py apply --dir /tmp/simskip-scale            # ~8 min, needs 16 GB of disk
    python benchmarks/bench_scale.py train
    python benchmarks/bench_scale.py apply --rows 200000 --dir /tmp/s           # quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simskip_core.refiner import SkipRefiner
from simskip_core.scale.stream import NpySource, _write_rows, stream_apply

HERE = Path(__file__).resolve()


def make_refiner(dim: int) -> SkipRefiner:
    """A seeded refiner with a non-zero residual (the shape of a fitted one)."""
    torch.manual_seed(0)
    refiner = SkipRefiner(dim)
    torch.nn.init.normal_(refiner.g[-1].weight, std=0.02)
    return refiner.eval()


def write_input(path: Path, rows: int, dim: int, chunk: int) -> float:
    """Write a random (rows, dim) float32 .npy chunk by chunk; returns seconds."""
    tic = time.perf_counter()
    mm = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(rows, dim)
    )  # header + sparse body
    offset = int(mm.offset)
    del mm
    rng = np.random.default_rng(0)
    fd = os.open(path, os.O_WRONLY)
    try:
        for start in range(0, rows, chunk):
            block = rng.standard_normal((min(chunk, rows - start), dim), dtype=np.float32)
            _write_rows(fd, offset + start * dim * 4, block)
    finally:
        os.close(fd)
    return time.perf_counter() - tic


def _plain_pass(inp: Path, out: Path, chunk: int, flop_matched: bool) -> None:
    source = NpySource(inp)
    n, d = source.shape
    mm = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, d))
    offset = int(mm.offset)
    del mm
    refiner = make_refiner(d)
    w = torch.randn(d, d) / d**0.5
    w1, b1 = refiner.g[0].weight.detach().T.contiguous(), refiner.g[0].bias.detach()
    w2, b2 = refiner.g[2].weight.detach().T.contiguous(), refiner.g[2].bias.detach()
    fd = os.open(out, os.O_WRONLY)
    try:
        with torch.inference_mode():
            for start in range(0, n, chunk):
                x = torch.from_numpy(source.read(start, min(start + chunk, n)))
                y = x + torch.relu(x @ w1 + b1) @ w2 + b2 if flop_matched else torch.matmul(x, w)
                _write_rows(fd, offset + start * d * 4, y.numpy())
    finally:
        os.close(fd)
        source.close()


def child(phase: str, inp: Path, out: Path, chunk: int, threads: int) -> None:
    """Run one pass (in a fresh process) and print its JSON result."""
    torch.set_num_threads(threads)
    tic = time.perf_counter()
    if phase == "stream":
        result = stream_apply(
            make_refiner(NpySource(inp).d), inp, out, chunk_rows=chunk, progress=False, device="cpu"
        )
        assert result.complete
    else:
        _plain_pass(inp, out, chunk, flop_matched=phase == "matmul_flop_matched")
    seconds = time.perf_counter() - tic
    print(json.dumps({"seconds": seconds, "peak_rss_mb": _vm_hwm_mb()}))


def _vm_hwm_mb() -> float | None:
    """This process's own peak resident set (VmHWM of its address space), in MiB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_child(phase: str, inp: Path, out: Path, chunk: int, threads: int) -> dict[str, Any]:
    """Run ``phase`` in a child process; returns its wall time and peak RSS.

    The peak is the child's VmHWM (its own address space after exec); ``wait4``'s ru_maxrss is kept for
    reference, but on Linux it also counts the parent's pages shared before the exec.
    """
    cmd = [sys.executable, str(HERE), "_child", phase, str(inp), str(out), str(chunk), str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env={**os.environ, "TQDM_DISABLE": "1"})
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{phase} pass failed with exit code {proc.returncode}")
    result = json.loads(output.decode().strip().splitlines()[-1])
    result["ru_maxrss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return result


def check_sample(inp: Path, out: Path, dim: int, blocks: int = 20, rows: int = 256) -> float:
    """Largest |stream output - refiner(input)| over random blocks of rows (read without memory maps)."""
    src, got = NpySource(inp), NpySource(out)
    refiner, worst = make_refiner(dim), 0.0
    for start in np.random.default_rng(1).integers(0, max(1, src.n - rows), size=blocks):
        stop = min(int(start) + rows, src.n)
        with torch.no_grad():
            expected = refiner(torch.from_numpy(src.read(int(start), stop))).numpy()
        worst = max(worst, float(np.abs(got.read(int(start), stop) - expected).max()))
    src.close()
    got.close()
    return worst


def bench_apply(args: argparse.Namespace) -> dict[str, Any]:
    """The apply benchmark; returns the report."""
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    need = 2 * args.rows * args.dim * 4 + (1 << 30)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise SystemExit(
            f"{folder} has {free / 1e9:.1f} GB free but the benchmark needs {need / 1e9:.1f} GB; use --dir or --rows."
        )
    inp, out = folder / "scale-input.npy", folder / "scale-output.npy"
    report: dict[str, Any] = {
        "rows": args.rows,
        "dim": args.dim,
        "chunk_rows": args.chunk,
        "threads": args.threads,
    }
    report["input_gb"] = args.rows * args.dim * 4 / 1e9
    try:
        report["write_input_seconds"] = write_input(inp, args.rows, args.dim, args.chunk)
        for phase in args.phases:
            for path in folder.glob(out.name + "*"):
                path.unlink()
            print(f"[bench_scale] {phase} pass ...", file=sys.stderr, flush=True)
            load = os.getloadavg()[0]
            result = run_child(phase, inp, out, args.chunk, args.threads)
            result["rows_per_second"] = args.rows / result["seconds"]
            result["gb_per_second_in"] = report["input_gb"] / result["seconds"]
            result["load_average_before"] = load
            if phase == "stream":
                result["max_abs_error_sampled"] = check_sample(inp, out, args.dim)
            report[phase] = result
            print(f"[bench_scale] {phase}: {json.dumps(result)}", file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            for path in [inp, *folder.glob(out.name + "*")]:
                path.unlink(missing_ok=True)
    if "stream" in report and "matmul" in report:
        report["stream_vs_matmul"] = report["stream"]["rows_per_second"] / report["matmul"]["rows_per_second"]
    if "stream" in report and "matmul_flop_matched" in report:
        report["stream_vs_flop_matched"] = (
            report["stream"]["rows_per_second"] / report["matmul_flop_matched"]["rows_per_second"]
        )
    return report


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    """Training throughput with torchrun on 1 and 2 ranks; returns the report."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    report: dict[str, Any] = {
        "rows": args.train_rows,
        "dim": args.dim,
        "batch": args.batch,
        "epochs": args.epochs,
    }
    with tempfile.TemporaryDirectory(prefix="simskip-train-") as tmp:
        data = Path(tmp) / "x.npy"
        np.save(data, np.random.default_rng(0).standard_normal((args.train_rows, args.dim), dtype=np.float32))
        runs = [(1, 2), (1, 1), (2, 1)]  # (ranks, threads per rank)
        for ranks, threads in runs:
            model = Path(tmp) / f"model-{ranks}-{threads}"
            cmd = [
                torchrun, "--standalone", f"--nproc_per_node={ranks}", "-m", "simskip_core", "refine",
                str(data), "--save-model", str(model), "--epochs", str(args.epochs), "--batch-size", str(args.batch),
                "--val-fraction", "0", "--quiet", "--device", "cpu",
            ]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
            load = os.getloadavg()[0]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"torchrun with {ranks} rank(s) failed:\n{proc.stderr[-3000:]}")
            summary = json.loads(proc.stdout.strip().splitlines()[-1])
            seconds = summary["epoch_seconds"][-1]
            report[f"{ranks}x{threads}"] = {
                "ranks": ranks,
                "threads_per_rank": threads,
                "last_epoch_seconds": seconds,
                "rows_per_second": args.train_rows / seconds,
                "load_average_before": load,
            }
            print(
                f"[bench_scale] train {ranks} rank(s) x {threads} thread(s): {report[f'{ranks}x{threads}']}",
                file=sys.stderr,
            )
        from safetensors.torch import load_file

        one = load_file(str(Path(tmp) / "model-1-2" / "model.safetensors"))
        two = load_file(str(Path(tmp) / "model-2-1" / "model.safetensors"))
        report["max_weight_difference_1_vs_2_ranks"] = max(float((one[k] - two[k]).abs().max()) for k in one)
    report["speedup_2_ranks_vs_1_rank_2_threads"] = (
        report["2x1"]["rows_per_second"] / report["1x2"]["rows_per_second"]
    )
    report["speedup_2_ranks_vs_1_rank_1_thread"] = (
        report["2x1"]["rows_per_second"] / report["1x1"]["rows_per_second"]
    )
    return report


def main() -> None:
    """Command line; prints one JSON report."""
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        phase, inp, out, chunk, threads = sys.argv[2:7]
        child(phase, Path(inp), Path(out), int(chunk), int(threads))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["apply", "train", "all"], nargs="?", default="all")
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--chunk", type=int, default=65536)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the apply passes")
    parser.add_argument("--phases", nargs="+", default=["matmul", "stream", "matmul_flop_matched"])
    parser.add_argument("--dir", default="/tmp/simskip-scale", help="where the input and output files go")
    parser.add_argument("--keep", action="store_true", help="keep the input file afterwards")
    parser.add_argument("--train-rows", type=int, default=512 * 40)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    if args.what in ("apply", "all"):
        report["apply"] = bench_apply(args)
    if args.what in ("train", "all"):
        report["train"] = bench_train(args)
    report["load_average_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
