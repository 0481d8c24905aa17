"""The recording benchmark, at a toy size: both measurements run, the pool is rebuilt from stored vectors."""

import pytest

from benchmarks.banking77 import dataset_dir
from benchmarks.recording import run


@pytest.mark.skipif(not (dataset_dir() / "train.csv").is_file(), reason="the Banking77 rows are not here")
def test_the_recording_benchmark_measures_overhead_and_a_rebuild_that_reads_stored_vectors():
    result = run(calls=4, pool_size=150, queries=3, added_per_query=2)
    for overhead in result["overhead"]:
        by_name = {row["contender"]: row for row in overhead["contenders"]}
        assert by_name["bare program"]["added_median_ms"] == 0 and by_name["Recorder"]["traces_written"] >= 4
        assert by_name["Recorder"]["traces_lost"] == 0
    retrieval = result["retrieval"]
    assert retrieval["fresh_hits"] == 3  # the correction saved just before each query is among its demos
    assert retrieval["vectors_read_from_store"] == 150 and retrieval["embedded_rows"] == 3 * 2
    assert "vectors read" in result["table"] and "Load average" in result["table"]
