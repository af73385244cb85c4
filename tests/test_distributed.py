"""Distributed training on 2 CPU processes (gloo), spawned from the test: same weights as 1 process, exact gathers.

One spawn runs every scenario (process start-up dominates the cost); each test then checks one result.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from simskip_core import train as train_module
from simskip_core.augment import build_augmentation
from simskip_core.losses import MultiSimilarityLoss, NTXentLoss
from simskip_core.pairs import build_signals
from simskip_core.refiner import SkipRefiner
from simskip_core.scale import distributed as sdist
from simskip_core.scale.stream import stream_apply
from simskip_core.train import TrainConfig, fit_refiner

WORLD = 2
AUGMENT = [("mask", {"keep_prob": 0.8}), ("noise", {"scale": 0.5})]
# batch_size 63 splits 32 / 31 rows, so the padded gather of unequal slices is exercised too.
SCENARIOS: dict[str, dict[str, Any]] = {
    "ntxent": {"loss": "ntxent", "knn": None, "config": {"epochs": 3, "batch_size": 63}},
    "multisim_knn": {"loss": "multisimilarity", "knn": 5, "config": {"epochs": 2, "batch_size": 64}},
}


def _data() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    labels = np.repeat(np.arange(3), 100)
    return (centres[labels] + rng.normal(size=(300, 16))).astype(np.float32)


def _fit(
    name: str, x: np.ndarray, checkpoint_dir: str | None = None
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    spec = SCENARIOS[name]
    signals = build_signals(len(x), x=x, mutual_knn=spec["knn"], pairs=None, labels=None)
    loss_fn = NTXentLoss() if spec["loss"] == "ntxent" else MultiSimilarityLoss()
    torch.manual_seed(0)
    refiner = SkipRefiner(x.shape[1])
    config = TrainConfig(**spec["config"], progress=False, patience=None, checkpoint_dir=checkpoint_dir)
    history = fit_refiner(x, refiner, loss_fn, build_augmentation(AUGMENT), signals, config)
    state = {f"refiner.{k}": v for k, v in refiner.state_dict().items()}
    state.update({f"loss.{k}": v for k, v in loss_fn.state_dict().items()})
    return state, history


def _gather_case(rank: int) -> dict[str, torch.Tensor]:
    """Each rank holds its slice of a 9-item batch (5 / 4 rows); the loss is computed on the gathered batch."""
    gen = torch.Generator().manual_seed(3)
    z_a = torch.randn(9, 8, generator=gen)
    z_b = torch.randn(9, 8, generator=gen)
    sizes = sdist.split_sizes(9, WORLD)
    lo = sum(sizes[:rank])
    local_a = z_a[lo : lo + sizes[rank]].clone().requires_grad_(True)
    local_b = z_b[lo : lo + sizes[rank]].clone().requires_grad_(True)
    gathered_a = sdist.gather_with_grad(local_a, sizes)
    gathered_b = sdist.gather_with_grad(local_b)  # sizes found by a collective
    loss = NTXentLoss(temperature=0.3)(gathered_a, gathered_b)
    loss.backward()
    assert local_a.grad is not None and local_b.grad is not None
    return {
        "loss": loss.detach().reshape(1),
        "gathered_a": gathered_a.detach(),
        "gathered_b": gathered_b.detach(),
        # The local gradient is world * dL/d(slice); DDP's averaging divides by the world size.
        "grad_a": local_a.grad / WORLD,
        "grad_b": local_b.grad / WORLD,
    }


def _stream_refiner() -> SkipRefiner:
    torch.manual_seed(1)
    refiner = SkipRefiner(16)
    torch.nn.init.normal_(refiner.g[-1].weight, std=0.2)
    return refiner.eval()


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    os.environ["TQDM_DISABLE"] = "1"
    torch.set_num_threads(1)
    info = sdist.init_distributed("gloo")
    assert info.world_size == WORLD and info.rank == rank and sdist.is_distributed()
    writes: list[int] = []
    original = train_module._save_checkpoint

    def counting(folder: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        writes.append(rank)
        original(folder, tensors, meta)

    train_module._save_checkpoint = counting
    try:
        x = _data()
        path = Path(out)
        save_file(_gather_case(rank), str(path / f"gather-{rank}.safetensors"))
        for name in SCENARIOS:
            ckpt = str(path / f"ckpt-{name}") if name == "ntxent" else None
            state, history = _fit(name, x, checkpoint_dir=ckpt)
            save_file({k: v.contiguous() for k, v in state.items()}, str(path / f"{name}-{rank}.safetensors"))
            (path / f"{name}-{rank}.json").write_text(json.dumps(history), encoding="utf-8")
        (path / f"writes-{rank}.json").write_text(json.dumps(len(writes)), encoding="utf-8")
        # Sharded streaming apply under the process group: rank and world come from torch.distributed.
        result = stream_apply(
            _stream_refiner(), path / "x.npy", path / "refined.npy", chunk_rows=40, progress=False
        )
        (path / f"stream-{rank}.json").write_text(
            json.dumps({"complete": result.complete, "rows": result.rows_written}), encoding="utf-8"
        )
    finally:
        train_module._save_checkpoint = original
        sdist.destroy_distributed()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def spawned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run every scenario once on 2 gloo processes; their results land in the returned folder."""
    out = tmp_path_factory.mktemp("dist")
    np.save(out / "x.npy", _data())
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_processes_train_to_the_single_process_weights(spawned: Path, name: str) -> None:
    single, single_history = _fit(name, _data())
    for rank in range(WORLD):
        multi = load_file(str(spawned / f"{name}-{rank}.safetensors"))
        assert multi.keys() == single.keys()
        for key, value in single.items():
            torch.testing.assert_close(
                multi[key], value, rtol=1e-5, atol=1e-6, msg=f"{name} rank {rank}: {key}"
            )
        history = json.loads((spawned / f"{name}-{rank}.json").read_text(encoding="utf-8"))
        assert len(history) == len(single_history)
        for ours, theirs in zip(history, single_history):
            assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
            assert ours["val"] == pytest.approx(theirs["val"], rel=1e-5)
    # The step actually changed the weights (the last layer of g starts at zero).
    assert single["refiner.g.2.weight"].abs().max() > 1e-3


def test_gathered_ntxent_equals_single_process_loss_and_gradients(spawned: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    z_a = torch.randn(9, 8, generator=gen).requires_grad_(True)
    z_b = torch.randn(9, 8, generator=gen).requires_grad_(True)
    loss = NTXentLoss(temperature=0.3)(z_a, z_b)
    loss.backward()
    assert z_a.grad is not None and z_b.grad is not None
    sizes = sdist.split_sizes(9, WORLD)
    for rank in range(WORLD):
        got = load_file(str(spawned / f"gather-{rank}.safetensors"))
        lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
        assert torch.equal(got["gathered_a"], z_a.detach()) and torch.equal(got["gathered_b"], z_b.detach())
        torch.testing.assert_close(got["loss"][0], loss.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got["grad_a"], z_a.grad[lo:hi], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got["grad_b"], z_b.grad[lo:hi], rtol=1e-5, atol=1e-7)


def test_only_rank_zero_writes_checkpoints(spawned: Path) -> None:
    writes = [
        json.loads((spawned / f"writes-{rank}.json").read_text(encoding="utf-8")) for rank in range(WORLD)
    ]
    assert writes == [SCENARIOS["ntxent"]["config"]["epochs"], 0]
    assert (spawned / "ckpt-ntxent" / "checkpoint.safetensors").is_file()


def test_checkpoint_of_a_distributed_run_resumes_in_one_process(spawned: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(spawned / "ckpt-ntxent", folder)
    ranked = json.loads((spawned / "ntxent-0.json").read_text(encoding="utf-8"))
    x = _data()

    def resume(epochs: int, **changes: Any) -> list[dict[str, Any]]:
        torch.manual_seed(0)
        spec = {**SCENARIOS["ntxent"]["config"], "epochs": epochs, **changes}
        config = TrainConfig(**spec, progress=False, patience=None, checkpoint_dir=str(folder), resume=True)
        return fit_refiner(x, SkipRefiner(16), NTXentLoss(), build_augmentation(AUGMENT), [], config)

    assert resume(3) == ranked  # finished: nothing trained, the ranks' history returned
    longer = resume(4)
    assert longer[:3] == ranked and [h["epoch"] for h in longer] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"batch_size \(63 -> 64\)"):
        resume(5, batch_size=64)


def test_sharded_stream_apply_under_a_process_group(spawned: Path) -> None:
    results = [
        json.loads((spawned / f"stream-{rank}.json").read_text(encoding="utf-8")) for rank in range(WORLD)
    ]
    assert all(r["complete"] for r in results)
    assert [r["rows"] for r in results] == [160, 140]  # 8 chunks of 40 rows, minus 20 in the last: 4 + 4
    with torch.no_grad():
        expected = _stream_refiner()(torch.from_numpy(_data())).numpy()
    assert np.array_equal(np.load(spawned / "refined.npy"), expected)


def test_helpers_without_a_process_group() -> None:
    assert not sdist.is_distributed() and sdist.is_main_process()
    assert sdist.dist_info() == sdist.DistInfo()
    assert sdist.split_sizes(10, 3) == [4, 3, 3] and sdist.split_sizes(1, 2) == [1, 0]
    t = torch.ones(3, 2)
    assert sdist.gather_with_grad(t) is t and sdist.gather_without_grad(t) is t
    assert sdist.broadcast_float(1.5) == 1.5


def test_resolve_device_defaults_per_rank_and_refuses_absent_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    assert sdist.resolve_device(None) == sdist.default_device()
    assert sdist.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert sdist.resolve_device(None) == torch.device("cpu")
    x = _data()
    config = TrainConfig(epochs=1, batch_size=32, progress=False, device="cuda")
    # training and streaming share the check, so both name the same fix
    with pytest.raises(
        RuntimeError, match=r"'cuda' was asked for but CUDA is not available; pass device='cpu'"
    ):
        fit_refiner(x, SkipRefiner(16), NTXentLoss(), build_augmentation(AUGMENT), [], config)
    with pytest.raises(RuntimeError, match="CUDA is not available; pass device='cpu'"):
        sdist.resolve_device(torch.device("cuda", 0))


def test_distributed_true_without_a_process_group_names_the_fix() -> None:
    x = _data()
    config = TrainConfig(epochs=1, batch_size=32, progress=False, distributed=True)
    with pytest.raises(RuntimeError, match="torchrun"):
        fit_refiner(x, SkipRefiner(16), NTXentLoss(), build_augmentation(AUGMENT), [], config)


def test_bad_device_and_fit_rows_are_rejected() -> None:
    with pytest.raises(ValueError, match="torch device"):
        TrainConfig(device="gpu0")
    with pytest.raises(ValueError, match="augment_fit_rows"):
        TrainConfig(augment_fit_rows=1)


def test_augment_fit_rows_samples_and_memmap_input_matches_array(tmp_path: Path) -> None:
    x = _data()
    np.save(tmp_path / "x.npy", x)
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    states = []
    for data in (x, xm, torch.from_numpy(x)):
        torch.manual_seed(0)
        refiner = SkipRefiner(16)
        config = TrainConfig(epochs=1, batch_size=32, progress=False, augment_fit_rows=50)
        fit_refiner(data, refiner, NTXentLoss(), build_augmentation(AUGMENT), [], config)
        states.append(refiner.state_dict())
    for other in states[1:]:
        for key, value in states[0].items():
            assert torch.equal(other[key], value), key
