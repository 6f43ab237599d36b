"""Streaming data: threaded decode in file order, and the spill store for held-out batches."""
import numpy as np

from xtrt.config import PreprocessConfig
from xtrt.data.images import list_files
from xtrt.data.preprocess import build_preprocess
from xtrt.data.source import Batch, BatchSource
from xtrt.data.store import BatchStore


def test_threaded_decode_is_bit_identical_to_serial(image_dir):
    (image_dir / "broken.jpg").write_bytes(b"not an image")
    pre = build_preprocess(PreprocessConfig(preset="letterbox", size=[24, 24]))
    files = list_files(image_dir)

    def run(workers):
        src = BatchSource(files, "x", (3, 24, 24), pre, batch_size=3, workers=workers)
        return list(src), src

    serial, s1 = run(1)
    threaded, s4 = run(4)
    assert len(serial) == len(threaded) == 4
    for a, b in zip(serial, threaded):
        assert a.paths == b.paths
        assert np.array_equal(a.feeds["x"], b.feeds["x"])
    assert [p.name for p, _ in s1.skipped] == [p.name for p, _ in s4.skipped] == ["broken.jpg"]


def test_source_cache_is_bounded(image_dir):
    pre = build_preprocess(PreprocessConfig(preset="letterbox", size=[24, 24]))
    files = list_files(image_dir)
    small = BatchSource(files, "x", (3, 24, 24), pre, batch_size=4, cache_bytes=1)
    list(small)
    assert small._cache is None                  # over budget: the next pass decodes again
    big = BatchSource(files, "x", (3, 24, 24), pre, batch_size=4)
    list(big)
    assert big._cache is not None and len(big._cache) == 3


def test_store_spills_past_its_budget_and_reads_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    batches = [Batch({"x": rng.random((2, 3, 4, 4), dtype=np.float32)}, [f"f{i}a", f"f{i}b"])
               for i in range(5)]
    one = batches[0].feeds["x"].nbytes * 2       # room for the first batch and its output
    store = BatchStore(memory_bytes=one, spill_dir=tmp_path)
    for b in batches:
        store.append(b, [b.feeds["x"].sum(axis=(1, 2, 3))])
    assert store.spilled_batches == 4 and len(store) == 5 and store.count == 10
    spill = [p for p in tmp_path.iterdir() if p.name.startswith("xtrt-spill-")]
    assert len(spill) == 1 and len(list(spill[0].iterdir())) == 8
    for _ in range(2):                           # re-iterable
        for (b, (s,)), orig in zip(store.items(), batches):
            assert np.array_equal(b.feeds["x"], orig.feeds["x"]) and b.paths == orig.paths
            assert np.array_equal(s, orig.feeds["x"].sum(axis=(1, 2, 3)))
    assert [b.paths for b in store.batches(2)] == [batches[0].paths, batches[1].paths]
    store.close()
    assert not spill[0].exists()
