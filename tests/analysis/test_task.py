"""Task and detection-layout inference from output shapes (xtrt.analysis.task)."""
import pytest

from xtrt.analysis.decode import anchor_counts
from xtrt.analysis.task import infer_task
from xtrt.errors import DataError


def test_yolov8_heads_are_detection():
    assert infer_task([["N", 84, 8400]], "auto", (640, 640)) == ("detection", "yolo")
    assert infer_task([[1, 84, 2100]], "auto", (320, 320)) == ("detection", "yolo")
    assert 8400 in anchor_counts((640, 640)) and 2100 in anchor_counts((320, 320))


def test_ctc_recognizer_output_is_generic():
    """PP-OCR's CRNN: [N, 40 time steps, 6625 characters] on a 48x320 input."""
    assert infer_task([["N", 40, 6625]], "auto", (48, 320)) == ("generic", None)
    with pytest.raises(DataError, match="anchor grid"):
        infer_task([["N", 40, 6625]], "detection", (48, 320))


def test_few_anchors_or_no_classes_is_not_yolo():
    assert infer_task([["N", 84, 100]], "auto", None) == ("generic", None)   # A not >> 4 + C
    assert infer_task([["N", 4, 8400]], "auto", (640, 640)) == ("generic", None)   # no classes


def test_classification_e2e_and_requested():
    assert infer_task([["N", 1000]], "auto", (224, 224)) == ("classification", None)
    e2e = [["N", 1], ["N", 100, 4], ["N", 100], ["N", 100]]
    assert infer_task(e2e, "auto", (640, 640)) == ("detection", "e2e")
    assert infer_task([["N", 1000]], "generic", (224, 224)) == ("generic", None)
