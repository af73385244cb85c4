"""RefineBatches on the real engines: Ray Data (local) and PySpark (local mode) over a Parquet dataset.

Each run reads a Parquet folder, refines it on the engine and checks that the vectors equal
``SimSkip.transform`` bit for bit and that every id comes back with its own row.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simskip_core import SimSkip
from simskip_core.scale import RefineBatches

from scale_helpers import fixed_size_list

N, D, FILES = 3000, 32, 3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """A saved model, a Parquet folder of FILES files (ids shuffled) and the expected vectors by id."""
    root = tmp_path_factory.mktemp("engines")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(N, D)).astype(np.float32)
    model = SimSkip(epochs=2, batch_size=128, progress=False).fit(x[:1000])
    model_dir = model.save(root / "refiner")
    ids = rng.permutation(N)  # row i of the store has id ids[i]
    data = root / "store"
    data.mkdir()
    for k, rows in enumerate(np.array_split(np.arange(N), FILES)):
        vectors = fixed_size_list(x[rows])
        table = pa.table({"id": ids[rows], "embedding": vectors, "tag": [f"t{i}" for i in ids[rows]]})
        pq.write_table(table, data / f"part-{k}.parquet", row_group_size=400)
    expected = np.empty_like(x)
    expected[ids] = model.transform(x)
    return model_dir, data, expected


def _check(ids: np.ndarray, vectors: np.ndarray, tags: list[str], expected: np.ndarray) -> None:
    order = np.argsort(ids)
    assert np.array_equal(ids[order], np.arange(N)), "ids lost or duplicated"
    assert vectors.dtype == np.float32
    assert np.array_equal(vectors[order], expected), "vectors differ from SimSkip.transform"
    assert [tags[i] for i in order] == [f"t{i}" for i in range(N)]


@pytest.fixture(scope="module")
def ray_session() -> Iterator[object]:
    """One local Ray instance for the module (start-up takes seconds on 2 cores)."""
    import ray  # the 'ray' extra, which scripts/setup.sh installs: a missing install fails here

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("batch_format", ["pyarrow", "numpy", "pandas"])
def test_ray_data_map_batches_over_parquet(ray_session, store, batch_format: str) -> None:
    ray = ray_session
    model_dir, data, expected = store
    ds = ray.data.read_parquet(str(data)).map_batches(
        RefineBatches,
        fn_constructor_kwargs={"model_dir": str(model_dir), "id_column": "id"},
        concurrency=1,
        batch_size=700,
        batch_format=batch_format,
    )
    batch = ds.take_batch(batch_size=N + 1, batch_format="numpy")
    vectors = batch["embedding"]
    if vectors.dtype == object:
        vectors = np.stack(list(vectors))
    assert len(batch["id"]) == N
    _check(np.asarray(batch["id"]), vectors, list(batch["tag"]), expected)


def test_ray_data_bad_row_fails_with_its_id(ray_session, store, tmp_path: Path) -> None:
    ray = ray_session
    model_dir, _, _ = store
    x = np.zeros((10, D), dtype=np.float32)
    x[4, 0] = np.nan
    pq.write_table(pa.table({"id": np.arange(10) + 500, "embedding": list(x)}), tmp_path / "bad.parquet")
    ds = ray.data.read_parquet(str(tmp_path)).map_batches(
        RefineBatches,
        fn_constructor_kwargs={"model_dir": str(model_dir), "id_column": "id"},
        concurrency=1,
        batch_format="pyarrow",
    )
    with pytest.raises(Exception, match="with id 504"):
        ds.take_all()


@pytest.fixture(scope="module")
def spark_session() -> Iterator[object]:
    """A local-mode SparkSession whose Python workers run this interpreter."""
    if shutil.which("java") is None:
        pytest.skip("PySpark needs a Java runtime and none is on PATH (install a JDK 17 to run this test)")
    from pyspark.sql import SparkSession  # the 'spark' extra, which scripts/setup.sh installs

    old = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = (
        SparkSession.builder.master("local[1]")
        .appName("simskip-test")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    yield spark
    spark.stop()
    if old is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = old


@pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")
def test_spark_map_in_pandas_over_parquet(spark_session, store) -> None:
    model_dir, data, expected = store
    df = spark_session.read.parquet(str(data))  # type: ignore[attr-defined]
    refined = df.mapInPandas(RefineBatches(model_dir, id_column="id").map_in_pandas, schema=df.schema)
    frame = refined.toPandas()
    assert len(frame) == N
    _check(frame["id"].to_numpy(), np.stack(frame["embedding"].to_numpy()), list(frame["tag"]), expected)
