import numpy as np
import pytest
from PIL import Image

from xtrt.config import PreprocessConfig
from xtrt.data.images import decode_image, list_files
from xtrt.data.preprocess import build_preprocess, letterbox, resize_crop
from xtrt.data.source import BatchSource, split_files
from xtrt.errors import ConfigError, DataError


def test_list_files_folder_glob_and_errors(image_dir, tmp_path):
    files = list_files(image_dir)
    assert len(files) == 12 and files == sorted(files)
    assert len(list_files(str(image_dir / "*.png"))) == 6
    with pytest.raises(DataError, match="does not exist"):
        list_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images or tensors found in"):
        list_files(tmp_path / "empty")


def test_decode_converts_grayscale_and_rgba(tmp_path):
    Image.fromarray(np.full((5, 7), 100, np.uint8)).save(tmp_path / "g.png")
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    g = decode_image(tmp_path / "g.png")
    a = decode_image(tmp_path / "a.png")
    assert g.shape == (5, 7, 3) and g.dtype == np.uint8 and (g == 100).all()
    assert a.shape == (4, 4, 3) and 120 <= a[0, 0, 0] <= 136  # composited on black


def test_letterbox_keeps_aspect_and_reports_mapping():
    img = np.full((100, 200, 3), 255, np.uint8)
    x, meta = letterbox(img, (64, 64))
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert meta.scale == (0.32, 0.32) and meta.pad == (16.0, 0.0)
    assert x[:, 0, 0].tolist() == pytest.approx([114 / 255] * 3)     # pad row
    assert x[:, 32, 32].tolist() == pytest.approx([1.0] * 3)


def test_resize_crop_normalises():
    img = np.full((50, 100, 3), 255, np.uint8)
    x, _ = resize_crop(img, 32, (32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert x.shape == (3, 32, 32) and np.allclose(x, 1.0)


def test_unreadable_files_are_skipped_and_counted(image_dir):
    (image_dir / "broken.jpg").write_bytes(b"not an image")
    pre = build_preprocess(PreprocessConfig(preset="letterbox", size=[16, 16]))
    src = BatchSource(list_files(image_dir), "input", (3, 16, 16), pre, batch_size=5)
    batches = list(src)
    assert [b.size for b in batches] == [5, 5, 2]
    assert len(src.skipped) == 1 and src.skipped[0][0].name == "broken.jpg"


def test_zero_usable_images_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"xx")
    (tmp_path / "b.png").write_bytes(b"yy")
    pre = build_preprocess(PreprocessConfig(size=[8, 8]))
    with pytest.raises(DataError) as e:
        list(BatchSource(list_files(tmp_path), "input", (3, 8, 8), pre))
    assert str(e.value).startswith("no usable samples in 2 file(s); 2 unreadable or not finite, e.g. a.jpg")
    assert "give a folder of readable" in str(e.value)


def test_tensor_files_checked_for_shape_and_dtype(tmp_path):
    np.save(tmp_path / "ok.npy", np.ones((3, 3, 8, 8), np.float32))
    np.savez(tmp_path / "ok2.npz", input=np.zeros((3, 8, 8), np.float32))
    src = BatchSource(list_files(tmp_path), "input", (3, 8, 8), None, batch_size=4)
    assert [b.size for b in src] == [4]
    np.save(tmp_path / "shape.npy", np.zeros((2, 3, 9, 8), np.float32))
    with pytest.raises(DataError) as e:
        list(BatchSource([tmp_path / "shape.npy"], "input", (3, 8, 8), None))
    assert str(e.value).startswith("tensor file shape.npy has shape [2, 3, 9, 8], the model input "
                                   "'input' takes [N, 3, 8, 8]")
    np.save(tmp_path / "dtype.npy", np.zeros((3, 8, 8), np.int64))
    with pytest.raises(DataError) as e:
        list(BatchSource([tmp_path / "dtype.npy"], "input", (3, 8, 8), None))
    assert str(e.value).startswith("tensor file dtype.npy has dtype int64, the model input 'input' "
                                   "takes float32")


def test_batches_are_deterministic_and_cache_is_bounded(image_dir):
    pre = build_preprocess(PreprocessConfig(size=[16, 16]))
    files = list_files(image_dir)
    a = [b.feeds["input"] for b in BatchSource(files, "input", (3, 16, 16), pre, 4)]
    src = BatchSource(files, "input", (3, 16, 16), pre, 4, cache_bytes=0)
    b = [x.feeds["input"] for x in src]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert src._cache is None  # nothing kept beyond the budget: a second pass re-decodes


def test_split_is_disjoint_and_seeded(image_dir):
    files = list_files(image_dir)
    cal, ev = split_files(files, 5, 4, seed=1, shuffle=True)
    cal2, ev2 = split_files(files, 5, 4, seed=1, shuffle=True)
    assert cal == cal2 and ev == ev2 and not set(cal) & set(ev) and len(ev) == 4


def test_preprocess_plugin_errors(tmp_path):
    with pytest.raises(ConfigError, match="has no function name"):
        build_preprocess(PreprocessConfig(preset="plugin", plugin="x.py"))
    with pytest.raises(ConfigError, match="does not exist"):
        build_preprocess(PreprocessConfig(preset="plugin", plugin=str(tmp_path / "x.py") + ":f"))
    p = tmp_path / "pre.py"
    p.write_text("import numpy as np\ndef pre(img):\n    return np.zeros((3, 4, 4), np.float32)\n")
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        build_preprocess(PreprocessConfig(preset="plugin", plugin=f"{p}:nope"))
    fn = build_preprocess(PreprocessConfig(preset="plugin", plugin=f"{p}:pre"))
    x, meta = fn(np.zeros((10, 10, 3), np.uint8))
    assert x.shape == (3, 4, 4) and meta.orig_hw == (10, 10)
