"""Measure the text plugin's costs: model load, encoding throughput, SimSkip fit and apply time.

Run ``python -m simskip_text.measure --texts 300 --fit-rows 1000 --threads 1``. Wall-clock and CPU
time are both reported, since on a shared machine wall time mostly measures the other jobs.
Nothing is cached, so every number is a real encode; nothing is written to disk.
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["main"]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: Sequence[str] | None = None) -> int:
    """Print one line per measurement; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m simskip_text.measure", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--texts", type=int, default=300, help="texts per encoding measurement (default 300)")
    parser.add_argument(
        "--fit-rows", type=int, default=1000, help="training rows of the fit measurement (default 1000)"
    )
    parser.add_argument(
        "--epochs", type=int, default=30, help="SimSkip epochs (default 30, no early stopping)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default 64)")
    args = parser.parse_args(argv)
    for name, value in (("--texts", args.texts), ("--fit-rows", args.fit_rows), ("--epochs", args.epochs)):
        if value < 1:
            parser.error(f"{name} must be >= 1, got {value}")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    from simskip_core.api import SimSkip
    from simskip_text.data import load_rotten_tomatoes, load_tweet_sentiment, load_word_similarity
    from simskip_text.extract import encode_texts, load_default_model
    from simskip_text.tasks import TEXT_DEFAULTS

    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}"
    )
    model, wall, cpu = _timed(load_default_model)
    print(f"load all-MiniLM-L6-v2: {wall:.1f}s wall, {cpu:.1f}s cpu")

    rotten = load_rotten_tomatoes().texts
    corpora = {
        "tweets": load_tweet_sentiment().texts[: args.texts],
        "rotten tomatoes snippets": rotten[: args.texts],
        "single words (SimLex-999)": load_word_similarity("simlex999").words[: args.texts],
    }
    for name, texts in corpora.items():
        _, wall, cpu = _timed(
            functools.partial(encode_texts, model, texts, batch_size=args.batch_size, progress=False)
        )
        print(f"encode {len(texts)} {name}: {wall:.1f}s wall ({len(texts) / wall:.0f}/s), {cpu:.1f}s cpu")

    rows = rotten[: args.fit_rows]
    x, wall, _ = _timed(lambda: encode_texts(model, rows, batch_size=args.batch_size, progress=False))
    kwargs = {
        **TEXT_DEFAULTS,
        "epochs": args.epochs,
        "patience": None,
        "batch_size": max(2, min(256, int(0.9 * len(rows)) - 1)),
    }
    simskip, wall, cpu = _timed(lambda: SimSkip(**kwargs).fit(x))
    print(
        f"fit SimSkip on {x.shape[0]} x {x.shape[1]}, {len(simskip.history_)} epochs: {wall:.1f}s wall, {cpu:.1f}s cpu"
    )
    _, wall, cpu = _timed(lambda: simskip.transform(x))
    print(f"apply the refiner to {x.shape[0]} rows: {wall:.3f}s wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
