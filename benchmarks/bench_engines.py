"""Engine benchmark (issue 18): Ray Data over Parquet against ``stream_apply`` over ``.npy``, same machine and data.

Writes random (rows, dim) float32 embeddings under ``--dir`` twice, as one ``.npy`` file and as a
folder of Parquet files (``--files`` files, an int64 ``id`` column and a fixed-size-list<float32>
``embedding`` column, uncompressed, 65,536-row row groups), saves a SimSkip model of the fitted shape
(hidden 384: two 384 x 384 products per row), then runs each pass in a fresh child process:

* ``stream``: :func:`simskip_core.scale.stream.stream_apply` ``.npy`` -> ``.npy`` (65,536-row chunks);
* ``ray``: ``ray.data.read_parquet(IN).map_batches(RefineBatches, concurrency=1,
  batch_format="pyarrow", batch_size=65536).write_parquet(OUT)`` on ``ray.init(num_cpus=2)``; the
  job's seconds exclude ``ray.init``, which is reported apart;
* ``parquet``: :func:`simskip_core.scale.parquet.refine_parquet` folder -> folder, one process.

Every pass computes with 1 torch thread. Peak memory: each process's own VmHWM (its largest resident
set). For ``ray`` every Ray worker process (``ray::`` in its command line) is sampled every 0.25 s
during the job: its VmHWM, and the largest private (RssAnon) and object-store (RssShmem) parts seen;
the driver's VmHWM is reported apart. The outputs of ``ray`` and ``parquet`` are checked bit for bit
against ``SimSkip.transform`` on a sample of rows.

    python benchmarks/bench_engines.py --rows 2000000 --dir /tmp/simskip-engines   # ~12 GB of disk
    python benchmarks/bench_engines.py --rows 100000 --dir /tmp/e                    # quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from simskip_core import SimSkip
from simskip_core.refiner import SkipRefiner
from simskip_core.scale import RefineBatches
from simskip_core.scale.stream import _write_rows

HERE = Path(__file__).resolve()
BATCH = 65536


def save_model(path: Path, dim: int) -> Path:
    """Save a SimSkip model whose refiner has the fitted shape and a non-zero residual."""
    x = np.random.default_rng(0).standard_normal((512, dim), dtype=np.float32)
    model = SimSkip(epochs=1, batch_size=256, patience=None, progress=False).fit(x)
    torch.manual_seed(0)
    assert isinstance(model.refiner_, SkipRefiner)
    torch.nn.init.normal_(model.refiner_.g[-1].weight, std=0.02)
    return model.save(path, overwrite=True)


def write_inputs(folder: Path, rows: int, dim: int, files: int) -> dict[str, float]:
    """The same random rows as ``folder/in.npy`` and as ``folder/in-parquet/part-*.parquet``; returns seconds."""
    npy = folder / "in.npy"
    mm = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(rows, dim))
    offset = int(mm.offset)
    del mm
    (folder / "in-parquet").mkdir()
    bounds = np.linspace(0, rows, files + 1).astype(int)
    rng = np.random.default_rng(0)
    tic = time.perf_counter()
    fd = os.open(npy, os.O_WRONLY)
    try:
        for k in range(files):
            path = folder / "in-parquet" / f"part-{k:03d}.parquet"
            schema = pa.schema([("id", pa.int64()), ("embedding", pa.list_(pa.float32(), dim))])
            with pq.ParquetWriter(path, schema, compression="none") as writer:
                for start in range(bounds[k], bounds[k + 1], BATCH):
                    stop = min(start + BATCH, bounds[k + 1])
                    block = rng.standard_normal((stop - start, dim), dtype=np.float32)
                    _write_rows(fd, offset + start * dim * 4, block)
                    vectors = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), dim)
                    writer.write_table(
                        pa.table({"id": np.arange(start, stop), "embedding": vectors}, schema=schema)
                    )
    finally:
        os.close(fd)
    return {"write_inputs_seconds": time.perf_counter() - tic}


def _vm_hwm_mb(pid: int | str = "self") -> float | None:
    """Peak resident set (VmHWM) of a process, in MiB; None when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _status(pid: str) -> dict[str, int]:
    """VmHWM, RssAnon and RssShmem (KiB) of a process; empty when it is gone."""
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssShmem"):
                fields[key] = int(value.split()[0])
    except OSError:
        pass
    return fields


class RayWorkerSampler(threading.Thread):
    """Samples every Ray worker process (``ray::`` in its command line) until stopped.

    VmHWM is each process's own peak resident set, so sampling misses nothing of it while the process
    lives; RssAnon (private memory) and RssShmem (object-store pages it mapped) are current values, whose
    largest samples are kept.
    """

    def __init__(self, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.stop = threading.Event()
        self.seen: dict[str, dict[str, Any]] = {}

    def run(self) -> None:
        """Sample until :attr:`stop` is set."""
        while not self.stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """One pass over /proc."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if not cmdline.startswith("ray::"):
                continue
            record = self.seen.setdefault(entry.name, {"names": [], "VmHWM": 0, "RssAnon": 0, "RssShmem": 0})
            name = cmdline.split()[0]
            if name not in record["names"]:
                record["names"].append(name)
            for key, value in _status(entry.name).items():
                record[key] = max(record[key], value)

    def report(self) -> list[dict[str, Any]]:
        """Per worker process: its names over time and peaks in MiB, largest VmHWM first."""
        rows = [
            {
                "names": r["names"],
                "peak_rss_mb": r["VmHWM"] / 1024,
                "max_private_mb": r["RssAnon"] / 1024,
                "max_object_store_mb": r["RssShmem"] / 1024,
            }
            for r in self.seen.values()
        ]
        return sorted(rows, key=lambda row: -row["peak_rss_mb"])


class OneThreadRefineBatches(RefineBatches):
    """RefineBatches computing with 1 torch thread (as every pass of this benchmark)."""

    def __init__(self, **kwargs: Any) -> None:
        torch.set_num_threads(1)
        super().__init__(**kwargs)


def child(phase: str, folder: Path, model_dir: Path) -> None:
    """Run one pass (in a fresh process) and print its JSON result."""
    torch.set_num_threads(1)
    result: dict[str, Any] = {}
    if phase == "stream":
        from simskip_core.scale.stream import stream_apply

        tic = time.perf_counter()
        stream_apply(
            SimSkip.load(model_dir),
            folder / "in.npy",
            folder / "out.npy",
            chunk_rows=BATCH,
            device="cpu",
            progress=False,
        )
        result["seconds"] = time.perf_counter() - tic
    elif phase == "parquet":
        from simskip_core.scale.parquet import refine_parquet

        tic = time.perf_counter()
        refine_parquet(
            model_dir, folder / "in-parquet", folder / "out-parquet", batch_rows=BATCH, progress=False
        )
        result["seconds"] = time.perf_counter() - tic
    else:
        import ray

        tic = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        result["ray_init_seconds"] = time.perf_counter() - tic
        sampler = RayWorkerSampler()
        sampler.start()
        tic = time.perf_counter()
        ray.data.read_parquet(str(folder / "in-parquet")).map_batches(
            OneThreadRefineBatches,
            fn_constructor_kwargs={"model_dir": str(model_dir)},
            concurrency=1,
            batch_format="pyarrow",
            batch_size=BATCH,
        ).write_parquet(str(folder / "out-ray"))
        result["seconds"] = time.perf_counter() - tic
        sampler.stop.set()
        sampler.join()
        sampler.sample()
        workers = sampler.report()
        result["workers"] = workers
        result["max_worker_peak_rss_mb"] = max((w["peak_rss_mb"] for w in workers), default=None)
        result["max_worker_private_mb"] = max((w["max_private_mb"] for w in workers), default=None)
        ray.shutdown()
    result["peak_rss_mb"] = _vm_hwm_mb()
    print(json.dumps(result))


def run_child(phase: str, folder: Path, model_dir: Path) -> dict[str, Any]:
    """Run ``phase`` in a child process; returns its JSON result."""
    cmd = [sys.executable, str(HERE), "_child", phase, str(folder), str(model_dir)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, env={**os.environ, "TQDM_DISABLE": "1"}, check=True)
    return dict(json.loads(out.stdout.decode().strip().splitlines()[-1]))


def check_parquet_output(out: Path, inp: Path, model_dir: Path, rows: int = 4096) -> bool:
    """True when the first ``rows`` rows of every output file equal ``SimSkip.transform`` of their ids' inputs."""
    model = SimSkip.load(model_dir)
    x = np.load(inp, mmap_mode="r")
    for path in sorted(out.rglob("*.parquet")):
        batch = next(pq.ParquetFile(path).iter_batches(batch_size=rows))
        ids = batch.column("id").to_numpy()
        vectors = batch.column("embedding")
        if isinstance(vectors.type, pa.ExtensionType):  # Ray's tensor type
            vectors = vectors.storage
        values = vectors.flatten().to_numpy().reshape(len(ids), -1)
        if not np.array_equal(values, model.transform(np.asarray(x[ids]))):
            return False
    return True


def main() -> None:
    """Command line; prints one JSON report."""
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--files", type=int, default=8, help="Parquet files the rows are split into")
    parser.add_argument("--phases", nargs="+", default=["stream", "ray", "parquet"])
    parser.add_argument(
        "--dir", default="/tmp/simskip-engines", help="a new or empty folder for the inputs and outputs"
    )
    args = parser.parse_args()
    folder = Path(args.dir)
    need = 4 * args.rows * args.dim * 4 * 1.05 + (1 << 30)
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(
            f"{folder} is not empty; pass --dir with a new or empty folder (it is removed afterwards)."
        )
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(folder).free < need:
        raise SystemExit(f"{folder} needs {need / 1e9:.1f} GB free; use --dir or fewer --rows.")
    report: dict[str, Any] = {
        "rows": args.rows,
        "dim": args.dim,
        "files": args.files,
        "batch_rows": BATCH,
        "torch_threads": 1,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "load_average_before": os.getloadavg(),
    }
    try:
        model_dir = save_model(folder / "model", args.dim)
        report.update(write_inputs(folder, args.rows, args.dim, args.files))
        for phase in args.phases:
            print(f"[bench_engines] {phase} ...", file=sys.stderr, flush=True)
            result = run_child(phase, folder, model_dir)
            result["rows_per_second"] = args.rows / result["seconds"]
            if phase != "stream":
                result["bit_identical_sample"] = check_parquet_output(
                    folder / f"out-{phase}", folder / "in.npy", model_dir
                )
            report[phase] = result
            print(f"[bench_engines] {phase}: {json.dumps(result)}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for phase in ("ray", "parquet"):
        if phase in report and "stream" in report:
            report[f"{phase}_vs_stream_rows_per_second"] = (
                report[phase]["rows_per_second"] / report["stream"]["rows_per_second"]
            )
    report["load_average_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
