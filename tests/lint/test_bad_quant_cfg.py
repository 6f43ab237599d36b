"""xtrt.lint with a malformed quant_cfg.json beside the model: one line naming the file, exit 1."""
from __future__ import annotations

import onnx
import pytest

from xtrt.cli import run_main
from xtrt.lint.__main__ import main

from . import tiny_models as tm

NOT_OURS = ("is not an xtrt quant_cfg.json (expected an object with float_ops {node: reason} and "
            "decode_tail [nodes]) (fix: pass the quant_cfg.json written by xtrt.quant with "
            "--quant-cfg, or move the other file away)")


@pytest.mark.parametrize("text,tail", [
    ('{"float_ops": ', None),
    (b"\xff\xfe\x00garbage", None),
    ("[1, 2]", NOT_OURS),
    ('{"float_ops": 5}', NOT_OURS),
    ('{"decode_tail": "conv"}', NOT_OURS),
])
def test_malformed_quant_cfg_beside_the_model(tmp_path, capsys, text, tail):
    model = tmp_path / "quantized.onnx"
    onnx.save(tm.qdq_conv(), model)
    cfg = tmp_path / "quant_cfg.json"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert run_main(main, [str(model)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    if tail is None:
        assert line.startswith(f"error: cannot read '{cfg}' as JSON: ")
        assert line.endswith("(fix: pass the quant_cfg.json written by xtrt.quant with "
                             "--quant-cfg, or move the broken file away)")
    else:
        assert line == f"error: '{cfg}' {tail}"
