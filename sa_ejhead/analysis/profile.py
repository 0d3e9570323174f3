"""Per-op CPU profile of configs: where the time goes that FLOPs do not show.

``tools/benchmark.py --profile`` runs, for each config spec, ``--runs`` inference forwards and
``--train-steps`` training steps after ``--warmup`` untimed ones, under ``torch.profiler`` (CPU
activity), with the inputs and fixed RoI counts of the cost tool (:mod:`.measure`), and
aggregates the **self CPU time per op name** (``key_averages()``: the time spent in an op
itself, not in the ops it calls, so the ops add up without double counting), per run.

Reading the figures:

* an op's self time is the wall time of the thread that called it (intra-op parallel work
  included), so the ops' total is about the profiled wall time, minus the Python between ops;
* ``torch.profiler`` records the ops of the threads that call them only while it runs on them:
  the RoIAlign pieces that :class:`~sa_ejhead.modeling.ThreadedROIAlign` runs on its worker
  threads are not seen; its calling thread's span is, as ``sa_ejhead::threaded_roi_align``
  (submitting, waiting, copying the pieces, which are ``aten::copy_``);
* the profiler's overhead (a few microseconds per op) is in every figure, equally for every
  config.

:func:`compare_ops` lines the configs up op by op against the first one and marks every op whose
time differs from the first config's by more than a share (2 % by default) of the first config's
total; :func:`sa_ejhead.analysis.report.format_profile_tables` writes the tables.
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
    "PROFILE_KINDS",
    "PROFILERS",
    "profile_calls",
    "profile_inference",
    "profile_training",
    "compare_ops",
]

PROFILE_KINDS = ("infer", "train")


def profile_calls(step, runs=3, warmup=1):
    """Self CPU time per op name of ``runs`` calls of ``step()`` after ``warmup`` untimed ones.

    Args:
        step (callable): called without arguments.
        runs (int): profiled calls (>= 1).
        warmup (int): calls before the profiler starts.

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
    """Profile of inference forwards (no gradient) on one random image of ``input_size``.

    Args:
        model (nn.Module): in eval mode, RoI counts fixed (:func:`.measure.fix_roi_counts`).
        options (dict): ``input_size`` (h, w), ``runs``, ``warmup``.

    Returns:
        dict: see :func:`profile_calls`; and ``counts``, the RoIs and detections per image of the
        last forward.
    """
    inputs = random_inputs(*options["input_size"])
    model.eval()
    counts = {}
    with torch.no_grad(), _record_roi_counts(model, counts):
        result = profile_calls(lambda: model(inputs), options["runs"], options["warmup"])
    return dict(result, counts=counts)


def profile_training(model, options):
    """Profile of training steps (forward, backward, SGD step at learning rate 0, as
    :func:`.measure.time_training_step`) on a random batch of ``train_size``.

    Args:
        model (nn.Module): a Detectron2 model (put in training mode here, eval mode after).
        options (dict): ``train_size`` (h, w), ``train_batch``, ``train_steps``, ``warmup``.

    Returns:
        dict: see :func:`profile_calls`.
    """
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


# kind -> function(model, options) -> profile (the phases "profile_infer", "profile_train" of
# sa_ejhead.analysis.measure.PHASES)
PROFILERS = {"infer": profile_inference, "train": profile_training}


def compare_ops(profiles, threshold=0.02):
    """Line up the per-op profiles of several configs against the first one.

    Args:
        profiles (list[dict]): :func:`profile_calls` results, the reference first.
        threshold (float): an op is marked when its time in some config differs from the
            reference's by more than this share of the reference's total.

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
