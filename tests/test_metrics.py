import pytest

from tradecache.metrics import Histogram, Metrics, instrumented


def test_histogram_percentiles_are_close():
    h = Histogram()
    assert h.percentile(50) == 0.0
    for micros in range(1, 10_001):
        h.record(micros / 1e6)
    assert h.count == 10_000
    assert h.percentile(50) == pytest.approx(5.0, rel=0.07)
    assert h.percentile(99) == pytest.approx(9.9, rel=0.07)
    assert h.percentile(100) == pytest.approx(10.0, rel=1e-9)  # clamped to the max seen
    h.record(0.0)  # sub-microsecond samples land in the first bucket
    h.record(1e9)  # absurdly long samples land in the last bucket
    assert h.max_us == 1e15


def test_histogram_memory_is_bounded():
    h = Histogram()
    size = len(h.counts)
    for i in range(1, 5000):
        h.record(i * 1e-3)
    assert len(h.counts) == size


def test_metrics_snapshot_and_reset():
    m = Metrics()
    m.observe("a", 0.001)
    m.observe("a", 0.003, error=True)
    snap = m.snapshot()["a"]
    assert snap.count == 2 and snap.errors == 1
    assert snap.mean_ms == pytest.approx(2.0)
    assert snap.max_ms == pytest.approx(3.0)
    m.reset()
    assert m.snapshot() == {}


async def test_instrumented_records_success_and_error():
    class Store:
        def __init__(self) -> None:
            self.metrics = Metrics()

        @instrumented("store.op")
        async def op(self, fail: bool) -> int:
            if fail:
                raise RuntimeError("x")
            return 7

    store = Store()
    assert await store.op(False) == 7
    with pytest.raises(RuntimeError):
        await store.op(True)
    snap = store.metrics.snapshot()["store.op"]
    assert (snap.count, snap.errors) == (2, 1)
    assert Store.op.__name__ == "op"
