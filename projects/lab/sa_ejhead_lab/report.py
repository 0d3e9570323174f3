"""Tables of the cost tool (Markdown, written by ``tabulate``)."""

import os
import platform

import torch
from tabulate import tabulate

from .measure import PARTS

__all__ = [
    "COLUMNS",
    "format_cost_table",
    "format_paired_table",
    "format_variant_table",
    "format_coco_eval_table",
    "format_deploy_table",
    "format_profile_table",
    "format_profile_tables",
]

# (header, path in a row of measure.measure, scale, format): a column appears when some row has
# the figure. A new measurement (measure.PHASES) adds its columns here.
COLUMNS = [
    ("Params (M)", "params", 1e-6, "{:.1f}"),
    ("GFLOPs", "flops.total", 1e-9, "{:.1f}"),
    ("CPU latency (s)", "cpu_latency.median", 1, "{:.2f}"),
    # the fastest run: other processes only ever add time, so the minimum is the figure least
    # moved by a noisy machine
    ("CPU latency min (s)", "cpu_latency.min", 1, "{:.2f}"),
    ("CPU time/run (s)", "cpu_latency.cpu_median", 1, "{:.2f}"),
    ("CUDA latency (ms)", "cuda_latency.median", 1e3, "{:.1f}"),
    ("Train step CPU (s)", "train_step.median", 1, "{:.2f}"),
    ("Train step min (s)", "train_step.min", 1, "{:.2f}"),
    ("Train step CUDA (ms)", "cuda_train_step.median", 1e3, "{:.1f}"),
    ("Peak RSS infer (MiB)", "infer_peak_mb", 1, "{:.0f}"),
    ("Peak RSS train (MiB)", "train_peak_mb", 1, "{:.0f}"),
    ("CUDA peak train (MiB)", "cuda_train_peak_mb", 1, "{:.0f}"),
]


def get(row, path, default=None):
    """``row["a"]["b"]`` for the path ``"a.b"``, or ``default``."""
    for key in path.split("."):
        if not isinstance(row, dict) or key not in row:
            return default
        row = row[key]
    return row


def _with_ratio(value, base, scale, fmt):
    if value is None:
        return "-"
    return fmt.format(value * scale) + (f" ({value / base:.2f}x)" if base else "")


def _markdown(headers, rows):
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True)


def format_cost_table(rows):
    """Markdown tables of :func:`sa_ejhead_lab.measure.measure` rows, each figure with its
    ratio to the first row: the cost table (columns without any figure left out), then FLOPs per
    part when FLOPs were counted."""
    if not rows:
        return ""
    ref = rows[0]
    columns = [c for c in COLUMNS if any(get(r, c[1]) is not None for r in rows)]
    table = [
        [r["label"]] + [_with_ratio(get(r, p), get(ref, p), s, f) for _, p, s, f in columns]
        for r in rows
    ]
    text = _markdown(["Config"] + [c[0] for c in columns], table)
    if any(get(r, "flops.parts") for r in rows):
        table = []
        for r in rows:
            cells = [r["label"]]
            for p in PARTS:
                path = f"flops.parts.{p}"
                cells.append(_with_ratio(get(r, path), get(ref, path), 1e-9, "{:.1f}"))
            counts = get(r, "flops.counts", {})
            cells.append(
                "/".join(map(str, counts.get("proposals", ["-"])))
                + " / "
                + "/".join(map(str, counts.get("detections", ["-"])))
            )
            table.append(cells)
        headers = ["Config"] + [f"{p} GFLOPs" for p in PARTS] + ["RoIs / dets per image"]
        text += "\n\n" + _markdown(headers, table)
    return text


def format_paired_table(rows):
    """Markdown table of :func:`sa_ejhead_lab.measure.measure_paired` rows: per phase, the
    median time and the median of the per-call ratios to the first row, with their range."""
    columns = [
        (title, key)
        for title, key in (("CPU latency", "cpu_latency"), ("Train step", "train_step"))
        if any(key in r for r in rows)
    ]
    table = []
    for r in rows:
        cells = [r["label"]]
        for _, key in columns:
            ratio = r[key]["ratio"]
            cells.append(
                f"{r[key]['median']:.2f} s, {ratio['median']:.2f}x "
                f"({ratio['min']:.2f}-{ratio['max']:.2f}x)"
            )
        table.append(cells)
    headers = ["Config"] + [f"{t}: median, paired ratio (range)" for t, _ in columns]
    return _markdown(headers, table)


def _neck_cells(row, ref):
    flops = get(row, "flops.parts.neck")
    p2 = sum(
        v
        for k, v in get(row, "flops.by_module", {}).items()
        if k.startswith("backbone.") and k.count(".") == 1 and k.endswith("2")
    )
    return [
        f"{get(row, 'param_parts.neck') / 1e6:.2f}",
        f"{flops / 1e9:.1f}",
        f"{flops / get(ref, 'flops.parts.neck'):.2f}",
        f"{p2 / 1e9:.1f}",
    ]


def _head_flops(row):
    """Box path and mask path FLOPs of the ROI heads of a row; a shared refinement's FLOPs are
    split by the cells it refines on each path (its conv FLOPs are proportional to them)."""
    by_module = get(row, "flops.by_module", {})
    total = get(row, "flops.parts.roi_heads")
    mask = by_module.get("roi_heads.mask_pooler", 0) + by_module.get("roi_heads.mask_head", 0)
    refinement = by_module.get("roi_heads.refinement", 0)
    if refinement and get(row, "head_geometry.scope") == "shared":
        g = row["head_geometry"]
        box_cells = g["proposals"] * g["box_size"] ** 2
        mask_cells = g["detections"] * g["mask_size"] ** 2
        mask += refinement * mask_cells / (box_cells + mask_cells)
    return total - mask, mask


def _head_cells(row, ref):
    box, mask = _head_flops(row)
    total = get(row, "flops.parts.roi_heads")
    return [
        f"{get(row, 'param_parts.roi_heads') / 1e6:.1f}",
        f"{get(row, 'param_parts.refinement', 0) / 1e6:.2f}",
        f"{box / 1e9:.1f}",
        f"{mask / 1e9:.1f}",
        f"{total / 1e9:.1f}",
        f"{total / get(ref, 'flops.parts.roi_heads'):.2f}x",
    ]


_VARIANT_LAYOUTS = {
    "necks": (
        ["neck", "overrides", "params (M)", "GFLOPs", "x td", "GFLOPs at p2"],
        _neck_cells,
    ),
    "heads": (
        ["setting", "overrides", "params (M)", "BR params (M)", "box GFLOPs", "mask GFLOPs"]
        + ["total GFLOPs", "vs D2 heads"],
        _head_cells,
    ),
}


def format_variant_table(kind, rows):
    """The neck (``kind="necks"``) or ROI-head (``"heads"``) table of docs/safpn.md and
    docs/ejhead.md: the part's parameters and FLOPs in :func:`sa_ejhead_lab.measure.measure`
    rows, with ratios to the first row (necks: then a row for the bottom-up)."""
    headers, cells = _VARIANT_LAYOUTS[kind]
    table = [
        [r["label"], "`" + ", ".join(r["overrides"]) + "`" if r["overrides"] else ""]
        + cells(r, rows[0])
        for r in rows
    ]
    if kind == "necks":
        ref = rows[0]
        params, flops = get(ref, "param_parts.bottom_up"), get(ref, "flops.parts.bottom_up")
        table.append(
            ["bottom-up (not in the rows above)", "", f"{params / 1e6:.2f}", f"{flops / 1e9:.1f}"]
            + ["", ""]
        )
    return _markdown(headers, table)


def format_coco_eval_table(rows):
    """Markdown table of :func:`sa_ejhead_lab.coco_eval.time_coco_eval`'s timings and speed-ups."""
    table = []
    for r in rows:
        fast = r["faster"]
        diff = r.get("max_abs_diff")
        table.append(
            [r["iou_type"], r["num_images"], r["num_dets"], f"{r['pycocotools']:.2f}"]
            + ["-" if fast is None else f"{fast:.2f}"]
            + ["-" if fast is None else f"{r['pycocotools'] / fast:.1f}x"]
            + ["-" if diff is None else f"{diff:.1e}"]
        )
    headers = ["IoU type", "images", "detections", "pycocotools (s)", "faster-coco-eval (s)"]
    return _markdown(headers + ["speed-up", "max abs diff of stats"], table)


_DEPLOY_RUNTIMES = {"eager": "eager", "torchscript": "TorchScript", "onnxruntime": "onnxruntime"}


def _parity_cell(figures):
    parity = (figures or {}).get("parity")
    if not parity:
        return "-"
    iou = "-" if parity["mask_iou_min"] is None else f"{parity['mask_iou_min']:.3f}"
    box = "-" if parity["box_max_abs"] is None else f"{parity['box_max_abs']:.1e}"
    return f"{'ok' if parity['ok'] else 'MISMATCH'} {parity['matched']}/{parity['expected']}, " + (
        f"box {box} px, IoU >= {iou}"
    )


def format_deploy_table(rows):
    """Markdown table of rows with ``label`` and ``deploy``
    (:func:`sa_ejhead_lab.deploy.measure_deploy_configs`), latencies as ratios to the first row's
    eager latency."""
    if not rows:
        return ""
    ref, runtimes = rows[0]["deploy"]["eager"], list(_DEPLOY_RUNTIMES)
    table = []
    for row in rows:
        d, cells = row["deploy"], [row["label"]]
        for key in ("median", "cpu_median"):
            cells += [_with_ratio(get(d, f"{r}.{key}"), ref[key], 1, "{:.2f}") for r in runtimes]
        table.append(cells + [_parity_cell(d.get(r)) for r in runtimes[1:]])
    names = list(_DEPLOY_RUNTIMES.values())
    headers = ["Config"] + [f"{n} (s)" for n in names] + [f"{n} CPU time (s)" for n in names]
    headers += [f"{n} vs eager" for n in names[1:]]
    note = (
        f"\nLatency: median wall time per image; CPU time: process CPU seconds per image, all "
        f"threads (less sensitive to other load). {rows[0]['deploy']['threads']} threads (torch "
        "intra-op = onnxruntime intra_op_num_threads, inter-op 1); rescale and mask paste "
        "included for every runtime; ratios to the first row's eager figures. Parity: instances "
        "matched to eager's, largest box difference, smallest mask IoU."
    )
    return _markdown(headers, table) + note


def format_profile_table(labels, comparison, threshold=0.02, top=25):
    """Markdown table of one phase of the per-op profile.

    Args:
        labels (list[str]): the configs, the reference first.
        comparison (dict): :func:`sa_ejhead_lab.profile.compare_ops` of their profiles.
        threshold (float): the marking's share of the reference's total (for the header only).
        top (int): besides every marked op, the ``top`` ops with the largest time in any config;
            the others are summed in one row.

    Returns:
        str: columns op, ms per run for each config, then for each other config the difference
        vs the reference in ms and in % of the reference's total, and the mark; rows the ops
        (largest difference first), the other ops, the ops' total and the profiled wall time.
    """
    ops = comparison["ops"]
    by_time = sorted(ops, key=lambda e: -max(e["ms"]))[:top]
    shown = {e["op"] for e in by_time} | {e["op"] for e in ops if e["marked"]}
    others = [e for e in ops if e["op"] not in shown]
    mark = f"> {100 * threshold:g} %"
    headers = ["op"] + [f"{label} (ms)" for label in labels]
    for label in labels[1:]:
        headers += [f"{label} - {labels[0]} (ms)", f"(% of {labels[0]} total)"]
    headers.append(mark)

    def cells(name, entry, marked):
        row = [name] + [f"{v:.1f}" for v in entry["ms"]]
        for d, pct in zip(entry["diff_ms"][1:], entry["diff_pct"][1:]):
            row += [f"{d:+.1f}", f"{pct:+.1f}"]
        return row + [f"**{mark}**" if marked else ""]

    table = [cells(f"`{e['op']}`", e, e["marked"]) for e in ops if e["op"] in shown]
    if others:
        summed = {
            k: [sum(e[k][i] for e in others) for i in range(len(labels))]
            for k in ("ms", "diff_ms", "diff_pct")
        }
        table.append(cells(f"other ops ({len(others)})", summed, False))
    totals = comparison["totals"]
    table.append(cells("**total (ops' self CPU)**", totals["total_ms"], False))
    table.append(cells("wall time (profiled)", totals["wall_ms"], False))
    return _markdown(headers, table)


_PROFILE_TITLES = {"infer": "Inference forward", "train": "Training step"}


def format_profile_tables(rows, threshold=0.02, top=25):
    """The per-op profile tables of ``tools/benchmark.py --profile`` (rows with ``profile_infer``
    and/or ``profile_train``, the first the reference): per phase, a title line, the table
    (:func:`format_profile_table`) and the list of the marked ops."""
    from .profile import compare_ops

    labels = [r["label"] for r in rows]
    parts = []
    for kind, title in _PROFILE_TITLES.items():
        key = f"profile_{kind}"
        if not rows or not all(key in r for r in rows):
            continue
        comparison = compare_ops([r[key] for r in rows], threshold)
        marked = [e["op"] for e in comparison["ops"] if e["marked"]]
        runs = rows[0][key]["runs"]
        parts.append(
            f"{title}: self CPU time per op, ms per run (mean of {runs} profiled "
            f"runs); marked: the ops whose time differs from {labels[0]}'s by more than "
            f"{100 * threshold:g} % of {labels[0]}'s total ({comparison['threshold_ms']:.1f} ms)."
            + "\n\n"
            + format_profile_table(labels, comparison, threshold, top)
            + "\n\nMarked ops: "
            + (", ".join(f"`{name}`" for name in marked) if marked else "none")
            + "."
        )
    return "\n\n".join(parts)


def describe_machine(threads):
    """One line: torch version, CPU model and count, torch threads, CUDA device."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cuda = f", CUDA: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (
        f"Measured with torch {torch.__version__} on {cpu} ({os.cpu_count()} logical CPUs), "
        f"{threads} torch threads{cuda}."
    )
