"""Per-op CPU profile of configs (``tools/benchmark.py --profile``, docs/benchmark.md): where the
time goes that FLOPs do not show.

The figure is the **self CPU time per op name** (``torch.profiler``'s ``key_averages()``: the time
in an op itself, not in the ops it calls, so the ops add up without double counting), per run.
An op's self time is its calling thread's wall time; ops that other threads run are not seen:
:class:`~sa_ejhead.modeling.ThreadedROIAlign`'s worker threads show only as their calling
thread's span, ``sa_ejhead::threaded_roi_align``.
"""

import time

import torch

from .measure import (
    _num_classes,
    _record_roi_counts,
    random_inputs,
    random_training_batch,
    training_step,
)

__all__ = [
    "PROFILERS",
    "profile_calls",
    "profile_inference",
    "profile_training",
    "compare_ops",
]


def profile_calls(step, runs=3, warmup=1):
    """Self CPU time per op name of ``runs`` (>= 1) calls of ``step()`` after ``warmup`` ones.

    Returns:
        dict: ``runs``, ``wall_ms`` (profiled wall time per call), ``total_ms`` (the sum of the
        ops' self CPU time per call) and ``ops``: op name -> ``{"self_cpu_ms", "calls"}``, per call.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        step()
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(runs):
            step()
        wall = time.perf_counter() - start
    ops = {}
    for event in prof.key_averages():
        entry = ops.setdefault(event.key, {"self_cpu_ms": 0.0, "calls": 0.0})
        entry["self_cpu_ms"] += event.self_cpu_time_total / 1e3 / runs  # microseconds
        entry["calls"] += event.count / runs
    return {
        "runs": runs,
        "wall_ms": wall * 1e3 / runs,
        "total_ms": sum(op["self_cpu_ms"] for op in ops.values()),
        "ops": ops,
    }


def profile_inference(model, options):
    """:func:`profile_calls` of inference forwards on one random image of ``input_size`` (the
    ``options`` of :func:`.measure.measure_config`), plus ``counts``, the RoIs and detections
    per image of the last forward."""
    inputs = random_inputs(*options["input_size"])
    model.eval()
    counts = {}
    with torch.no_grad(), _record_roi_counts(model, counts):
        result = profile_calls(lambda: model(inputs), options["runs"], options["warmup"])
    return dict(result, counts=counts)


def profile_training(model, options):
    """:func:`profile_calls` of :func:`.measure.training_step` on a random batch of
    ``train_size`` (the model in training mode meanwhile, in eval mode after)."""
    from detectron2.utils.events import EventStorage

    h, w = options["train_size"]
    inputs = random_training_batch(h, w, _num_classes(model), options["train_batch"])
    model.train()
    try:
        with EventStorage():
            step = training_step(model, inputs)
            return profile_calls(step, options["train_steps"], options["warmup"])
    finally:
        model.eval()


# kind -> function(model, options) -> profile (the "profile_*" phases of measure.PHASES)
PROFILERS = {"infer": profile_inference, "train": profile_training}


def compare_ops(profiles, threshold=0.02):
    """Line up per-op profiles (:func:`profile_calls` results) against the first one; an op is
    marked when its time in some profile differs from the first's by more than ``threshold``
    times the first's total.

    Returns:
        dict: ``ops``: one dict per op name seen in any profile, sorted by the largest absolute
        difference, then by the largest time: ``op``, ``ms`` (per config, 0 where absent),
        ``diff_ms`` and ``diff_pct`` (per config, vs the reference; ``diff_pct`` in % of the
        reference's total), ``marked`` (bool); ``totals``: the same for the sum of the ops
        (``total_ms``) and for the profiled wall time (``wall_ms``); ``threshold_ms``.
    """
    if not profiles:
        raise ValueError("compare_ops needs at least one profile")
    ref_total = profiles[0]["total_ms"]
    names = sorted({name for p in profiles for name in p["ops"]})

    def line(values):
        diff = [v - values[0] for v in values]
        pct = [100.0 * d / ref_total if ref_total else 0.0 for d in diff]
        return {"ms": values, "diff_ms": diff, "diff_pct": pct}

    ops = []
    for name in names:
        values = [p["ops"].get(name, {}).get("self_cpu_ms", 0.0) for p in profiles]
        entry = {"op": name, **line(values)}
        entry["marked"] = any(abs(d) > threshold * ref_total for d in entry["diff_ms"])
        ops.append(entry)
    ops.sort(key=lambda e: (-max(abs(d) for d in e["diff_ms"]), -max(e["ms"]), e["op"]))
    totals = {key: line([p[key] for p in profiles]) for key in ("total_ms", "wall_ms")}
    return {"ops": ops, "totals": totals, "threshold_ms": threshold * ref_total}
