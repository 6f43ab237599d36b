"""``ROIAlign_TRT`` (TensorRT 8.5+; the plugin TensorRT's ONNX parser maps ONNX ``RoiAlign`` to, and one
of the two plugins TensorRT-RTX ships) and ONNX ``RoiAlign`` (PPQ 0.6.6 runs it only through
torchvision, whose compiled ops do not always load).

Semantics follow TensorRT's roiAlignKernel, which is ONNX Runtime's (and ONNX opset 16's):
inputs X [N, C, H, W], rois [R, 4] (x1, y1, x2, y2 in input scale), batch_indices [R];
``coordinate_transformation_mode`` 1/"half_pixel" shifts by -0.5 pixel, 0/"output_half_pixel" does
not and forces rois to at least 1x1; ``sampling_ratio`` 0 means ceil(roi_size / output_size) samples
per bin; ``mode`` 1/"avg" averages bilinear samples, 0/"max" takes the max over samples of the
largest *weighted* corner value (TensorRT's and ONNX Runtime's definition).  Samples outside
[-1, H] x [-1, W] count as 0.  An ONNX ``RoiAlign`` without ``coordinate_transformation_mode`` is
taken as opset 16 (half_pixel); opset-10 models mean output_half_pixel and should set it.
"""
from __future__ import annotations

from xtrt.errors import ModelError
from xtrt.ops.registry import REGISTRY, OpHandler

__all__ = ["RoIAlign", "roi_align"]

_BUDGET = 1 << 24  # elements per intermediate tensor, to bound memory for large rois/feature maps


def _mode(value, names: dict, default):
    if value is None:
        return default
    if isinstance(value, str):
        if value not in names:
            raise ModelError(f"RoIAlign: unknown mode {value!r}", f"use one of {sorted(names)}")
        return names[value]
    return int(value)


def _axis_samples(start, size, out: int, grid, limit: int):
    """Sample coordinates along one axis: returns (lo, hi, w_lo, w_hi) [R, out, G] and mask [R, 1, G]."""
    import torch

    g_max = int(grid.max()) if grid.numel() else 1
    g_max = max(g_max, 1)
    bins = torch.arange(out, device=start.device, dtype=start.dtype).view(1, out, 1)
    it = torch.arange(g_max, device=start.device, dtype=start.dtype).view(1, 1, g_max)
    bin_size = (size / out).view(-1, 1, 1)
    gf = grid.to(start.dtype).clamp(min=1).view(-1, 1, 1)
    pos = start.view(-1, 1, 1) + bins * bin_size + (it + 0.5) * bin_size / gf
    inside = (pos >= -1.0) & (pos <= float(limit))
    pos = pos.clamp(min=0.0)
    lo = pos.floor().to(torch.int64)
    at_edge = lo >= limit - 1
    lo = torch.where(at_edge, torch.full_like(lo, limit - 1), lo)
    hi = torch.where(at_edge, lo, lo + 1)
    pos = torch.where(at_edge, lo.to(pos.dtype), pos)
    frac = pos - lo.to(pos.dtype)
    zero = torch.zeros_like(frac)
    w_lo = torch.where(inside, 1.0 - frac, zero)
    w_hi = torch.where(inside, frac, zero)
    mask = it < grid.view(-1, 1, 1)
    return lo, hi, w_lo, w_hi, mask


def _chunks(bidx, n: int, step: int):
    """(image, roi indices) groups of at most ``step`` rois, so no feature map is copied per roi."""
    import torch

    step = max(1, int(step))
    for img in range(n):
        idx = (bidx == img).nonzero(as_tuple=True)[0]
        for start in range(0, idx.numel(), step):
            yield img, idx[start:start + step]


def roi_align(x, rois, batch_indices, *, output_height: int = 1, output_width: int = 1,
              sampling_ratio: int = 0, spatial_scale: float = 1.0, half_pixel: bool = True,
              average: bool = True):
    """RoIAlign on torch tensors; returns [R, C, output_height, output_width] in x's dtype."""
    import torch

    if x.dim() != 4 or rois.dim() != 2 or rois.shape[1] != 4 or batch_indices.numel() != rois.shape[0]:
        raise ModelError(f"RoIAlign: X {list(x.shape)}, rois {list(rois.shape)}, batch_indices "
                         f"{list(batch_indices.shape)} must be [N,C,H,W], [R,4], [R]", "fix the exporter")
    n, c, h, w = x.shape
    oh, ow = int(output_height), int(output_width)
    r = rois.shape[0]
    out = torch.zeros(r, c, oh, ow, dtype=torch.float32, device=x.device)
    if r == 0:
        return out.to(x.dtype)
    with torch.no_grad():
        xf = x.float()
        b = rois.float() * float(spatial_scale) - (0.5 if half_pixel else 0.0)
        rw, rh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        if not half_pixel:
            rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
        if sampling_ratio > 0:
            gh = torch.full((r,), int(sampling_ratio), device=x.device, dtype=torch.int64)
            gw = gh
        else:
            gh, gw = torch.ceil(rh / oh).to(torch.int64), torch.ceil(rw / ow).to(torch.int64)
        ylo, yhi, wylo, wyhi, my = _axis_samples(b[:, 1], rh, oh, gh, h)
        xlo, xhi, wxlo, wxhi, mx = _axis_samples(b[:, 0], rw, ow, gw, w)
        count = (gh * gw).clamp(min=1).to(torch.float32)
        bidx = batch_indices.to(torch.int64)
        if average:
            # bilinear sampling is separable: Y[r] = My[r] @ X[b_r] @ Mx[r]^T / count
            rows_y = torch.zeros(r, oh, h, device=x.device)
            wy = (wylo * my, wyhi * my)
            for idx, wt in ((ylo, wy[0]), (yhi, wy[1])):
                rows_y.scatter_add_(2, idx.reshape(r, oh, -1), wt.reshape(r, oh, -1))
            rows_x = torch.zeros(r, ow, w, device=x.device)
            wx = (wxlo * mx, wxhi * mx)
            for idx, wt in ((xlo, wx[0]), (xhi, wx[1])):
                rows_x.scatter_add_(2, idx.reshape(r, ow, -1), wt.reshape(r, ow, -1))
            for img, sl in _chunks(bidx, n, _BUDGET // max(1, c * oh * w)):
                tmp = torch.einsum("rph,chw->rcpw", rows_y[sl], xf[img])
                out[sl] = torch.einsum("rcpw,rqw->rcpq", tmp, rows_x[sl]) / count[sl].view(-1, 1, 1, 1)
        else:
            gy, gx = ylo.shape[2], xlo.shape[2]
            for img, sl in _chunks(bidx, n, _BUDGET // max(1, 2 * c * oh * gy * ow * gx)):
                m = xf[img].reshape(1, c, h * w)
                best = None
                for yi, wyv in ((ylo[sl], wylo[sl]), (yhi[sl], wyhi[sl])):
                    for xi, wxv in ((xlo[sl], wxlo[sl]), (xhi[sl], wxhi[sl])):
                        rr = yi.shape[0]
                        flat = (yi.reshape(rr, -1, 1) * w + xi.reshape(rr, 1, -1)).reshape(rr, 1, -1)
                        v = torch.gather(m.expand(rr, c, h * w), 2, flat.expand(rr, c, -1))
                        wt = (wyv.reshape(rr, -1, 1) * wxv.reshape(rr, 1, -1)).reshape(rr, 1, -1)
                        v = v * wt
                        best = v if best is None else torch.maximum(best, v)
                valid = (my[sl].expand(-1, oh, -1).reshape(-1, oh * gy, 1)
                         & mx[sl].expand(-1, ow, -1).reshape(-1, 1, ow * gx)).reshape(-1, 1, oh, gy, ow, gx)
                best = best.reshape(-1, c, oh, gy, ow, gx)
                best = torch.where(valid, best, torch.full_like(best, -torch.inf)).amax(dim=(3, 5))
                out[sl] = torch.where(torch.isinf(best), torch.zeros_like(best), best)
    return out.to(x.dtype)


@REGISTRY.register("ROIAlign_TRT", "RoIAlign_TRT", "RoiAlign")
class RoIAlign(OpHandler):
    """TensorRT ``ROIAlign_TRT`` (int attributes) and ONNX ``RoiAlign`` (string attributes)."""

    domain = "TRT"

    def forward(self, inputs, attrs):
        half = _mode(attrs.get("coordinate_transformation_mode"),
                     {"half_pixel": 1, "output_half_pixel": 0}, 1)
        avg = _mode(attrs.get("mode"), {"avg": 1, "max": 0}, 1)
        y = roi_align(inputs[0], inputs[1], inputs[2],
                      output_height=int(attrs.get("output_height", 1)),
                      output_width=int(attrs.get("output_width", 1)),
                      sampling_ratio=int(attrs.get("sampling_ratio", 0)),
                      spatial_scale=float(attrs.get("spatial_scale", 1.0)),
                      half_pixel=bool(half), average=bool(avg))
        return (y,)

    def infer(self, input_shapes, input_dtypes, attrs):
        c = input_shapes[0][1] if len(input_shapes[0]) > 1 else None
        return [([input_shapes[1][0], c, int(attrs.get("output_height", 1)),
                  int(attrs.get("output_width", 1))], input_dtypes[0])]
