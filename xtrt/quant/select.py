"""Method search: export every candidate calibration method, evaluate each on the held-out
images, keep the best (task metric, then worst output SQNR)."""
from __future__ import annotations

import logging

from xtrt.quant.calibrate import Calibrated, use_method

__all__ = ["choose_method"]

log = logging.getLogger(__name__)


def choose_method(calibrated: Calibrated, export_fn, evaluator,
                  images: int | None = None) -> dict | None:
    """Leave ``calibrated`` on the best candidate; the search as a dict for the report
    (None when the plan has one method).  With ``images``, candidates are scored on the
    evaluator's first ``images`` images only (``calibration.search_images``)."""
    from xtrt.quant.verify import metric_value

    plan = calibrated.plan
    if not plan.searches or not calibrated.stats:
        return None
    if images:
        evaluator = evaluator.first(images)
    rows = []
    for m in plan.methods:
        use_method(calibrated, m)
        ev = evaluator.evaluate_model(export_fn(calibrated))
        task = ev.task.get("top1_agreement", ev.task.get("map50_95"))
        rows.append({"method": m, "task_metric": task, "sqnr_db": metric_value(ev, "sqnr"),
                     "images": ev.images})
        log.info("calibration method %s: task metric %s, worst output SQNR %.2f dB", m, task,
                 rows[-1]["sqnr_db"] if rows[-1]["sqnr_db"] is not None else float("nan"))

    def key(r):
        t = r["task_metric"] if r["task_metric"] is not None else float("-inf")
        q = r["sqnr_db"] if r["sqnr_db"] is not None else float("-inf")
        return (t, q)

    best = max(rows, key=key)["method"]
    use_method(calibrated, best)
    return {"candidates": rows, "chosen": best,
            "judged_on": f"{evaluator.judged_on} (task metric, then worst output SQNR)"}
