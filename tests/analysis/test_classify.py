"""Top-k accuracy, FP32/INT8 agreement and label loading (folders, mapping files, CSV)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xtrt.analysis.classify import load_labels, top1_agreement, topk_accuracy
from xtrt.errors import DataError


def test_topk_accuracy_known():
    logits = np.array([[0.9, 0.05, 0.03, 0.02],   # label 0: top1 hit
                       [0.1, 0.2, 0.3, 0.4],      # label 2: rank 2 -> top1 miss, top2 hit
                       [0.4, 0.3, 0.2, 0.1]])     # label 3: last
    labels = np.array([0, 2, 3])
    assert topk_accuracy(logits, labels, k=(1, 2, 5)) == {
        "top1": pytest.approx(1 / 3), "top2": pytest.approx(2 / 3), "top5": 1.0}
    assert topk_accuracy(logits.reshape(3, 4, 1, 1), labels, k=(1,)) == {"top1": pytest.approx(1 / 3)}


def test_topk_accuracy_errors():
    with pytest.raises(DataError, match=r"labels must lie in 0..3 for a 4-class output; got 0..4"):
        topk_accuracy(np.zeros((2, 4)), np.array([0, 4]))
    with pytest.raises(DataError, match=r"2 logit rows but 3 labels"):
        topk_accuracy(np.zeros((2, 4)), np.array([0, 1, 2]))


def test_top1_agreement():
    ref = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    test = np.array([[0.9, 0.1, 0], [0.6, 0.4, 0], [0, 0.2, 0.8]], dtype=np.float32)
    assert top1_agreement(ref, test) == (2, 3)


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")
    return p


def test_labels_from_class_folders(tmp_path):
    root = tmp_path / "val"
    imgs = [_touch(root / "dog" / "1.jpg"), _touch(root / "cat" / "2.jpg"), _touch(root / "zebra" / "3.jpg")]
    assert load_labels(root, imgs).tolist() == [1, 0, 2]  # cat, dog, zebra sorted
    stray = _touch(tmp_path / "other" / "4.jpg")
    with pytest.raises(DataError, match=r"no label for image .*4\.jpg: it is not inside the class folders"):
        load_labels(root, [stray])


def test_labels_from_mapping_files(tmp_path):
    imgs = [_touch(tmp_path / "n02" / "a.JPEG"), _touch(tmp_path / "n01" / "b.JPEG")]
    pairs = tmp_path / "map.txt"
    pairs.write_text("n01 7\nn02 3\n")
    assert load_labels(pairs, imgs).tolist() == [3, 7]
    synsets = tmp_path / "LOC_synset_mapping.txt"
    synsets.write_text("n01 tench, Tinca tinca\nn02 goldfish, Carassius auratus\n")
    assert load_labels(synsets, imgs).tolist() == [1, 0]
    js = tmp_path / "map.json"
    js.write_text('{"n01": 10, "n02": 20}')
    assert load_labels(js, imgs).tolist() == [20, 10]
    assert load_labels({"n01": 1, "n02": 2}, imgs).tolist() == [2, 1]
    with pytest.raises(DataError, match=r"no label for image .*c\.JPEG: its folder 'n03' is not in the label mapping"):
        load_labels(pairs, [_touch(tmp_path / "n03" / "c.JPEG")])


def test_labels_from_csv(tmp_path):
    imgs = [_touch(tmp_path / "data" / "sub" / "x.png"), _touch(tmp_path / "data" / "y.png")]
    csv = tmp_path / "data" / "labels.csv"
    csv.write_text("file,label\nsub/x.png,4\ny.png,9\n")
    assert load_labels(csv, imgs).tolist() == [4, 9]
    bare = tmp_path / "bare.csv"  # bare file names, CSV elsewhere
    bare.write_text("file, label\nx.png, 1\ny.png, 2\n")
    assert load_labels(bare, imgs).tolist() == [1, 2]


def test_csv_errors_name_the_problem(tmp_path):
    img = _touch(tmp_path / "z.png")
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label\nx.png,1\n")
    with pytest.raises(DataError) as e:
        load_labels(csv, [img])
    assert str(e.value) == (f"no label for image {img} in {csv} "
                            "(fix: add a line 'file,label' for it, or remove the image)")
    csv.write_text("file,label\nz.png,cat\n")
    with pytest.raises(DataError, match=r"line 2: label 'cat' of 'z.png' is not an integer"):
        load_labels(csv, [img])
    csv.write_text("name,class\nz.png,1\n")
    with pytest.raises(DataError, match=r"needs a header with columns file,label"):
        load_labels(csv, [img])
    dup = tmp_path / "dup.csv"
    dup.write_text("file,label\na/z.png,1\nb/z.png,2\n")
    with pytest.raises(DataError, match=r"ambiguous"):
        load_labels(dup, [img])
    with pytest.raises(DataError, match=r"label source .*nope\.csv does not exist"):
        load_labels(tmp_path / "nope.csv", [img])
