"""Tables of the cost tool (Markdown, written by ``tabulate``)."""

import os
import platform

import torch
from tabulate import tabulate

__all__ = ["COLUMNS", "format_cost_table", "format_variant_table", "format_coco_eval_table"]

# (header, path in a row of measure.measure, scale, format): a column appears when some row has
# the figure. A new measurement (measure.PHASES) adds its columns here.
COLUMNS = [
    ("Params (M)", "params", 1e-6, "{:.1f}"),
    ("GFLOPs", "flops.total", 1e-9, "{:.1f}"),
    ("CPU latency (s)", "cpu_latency.median", 1, "{:.2f}"),
    ("CPU time/run (s)", "cpu_latency.cpu_median", 1, "{:.2f}"),
    ("CUDA latency (ms)", "cuda_latency.median", 1e3, "{:.1f}"),
    ("Train step CPU (s)", "train_step.median", 1, "{:.2f}"),
    ("Train step CUDA (ms)", "cuda_train_step.median", 1e3, "{:.1f}"),
    ("Peak RSS infer (MiB)", "infer_peak_mb", 1, "{:.0f}"),
    ("Peak RSS train (MiB)", "train_peak_mb", 1, "{:.0f}"),
    ("CUDA peak train (MiB)", "cuda_train_peak_mb", 1, "{:.0f}"),
]
PARTS = ("bottom_up", "neck", "proposal_generator", "roi_heads")


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
    """Markdown tables of the figures, each with its ratio to the first config.

    Args:
        rows (list[dict]): output of :func:`sa_ejhead.analysis.measure.measure`.

    Returns:
        str: a cost table (columns without any figure left out), then FLOPs per part when FLOPs
        were counted.
    """
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
    """Box path and mask path FLOPs of the ROI heads of a row (box on the proposals, mask on the
    detections). A shared refinement's FLOPs are split between the paths by the cells they
    refine (convolution FLOPs are proportional to them)."""
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
    docs/ejhead.md: the part's parameters and FLOPs, with ratios to the first row.

    Args:
        kind (str): "necks" or "heads".
        rows (list[dict]): :func:`sa_ejhead.analysis.measure.measure` rows (with FLOPs).

    Returns:
        str: the table, then a line for the bottom-up (necks).
    """
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
    """Markdown table of :func:`sa_ejhead.evaluation.time_coco_eval`'s timings and speed-ups."""
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
