"""The ``make demo`` pipeline: data, training, evaluation, pictures, all on the CPU.

:func:`run_demo` generates the embedded SA-Shapes set if needed, trains the LazyConfig model with
:func:`sa_ejhead.engine.do_train`, evaluates it (COCO box and mask AP) and writes to the output
folder:

* ``model_final.pth``: the checkpoint (``last_checkpoint`` names it);
* ``metrics.json``: Detectron2's per-iteration metrics, with the final AP at the last line;
* ``results.json`` and ``ap_table.md``: the final COCO metrics;
* ``loss.png``: the loss curves, drawn from ``metrics.json``;
* ``vis/*.png``: validation images, ground truth (left) beside the predictions (right);
* ``config.yaml`` and ``log.txt``.

``tools/train_demo.py`` is the command-line entry point.
"""

import copy
import json
import logging
import os
import shutil
import time

import cv2
import numpy as np
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import hooks
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer

from .analysis.measure import time_training_step
from .data import prepare_sa_shapes
from .engine import do_train, load_lazy_config
from .model_zoo import get_config_file
from .visualize import draw_predictions, first_test_dataset, read_image

__all__ = [
    "DEFAULT_CONFIG",
    "format_ap_table",
    "fit_iterations",
    "plot_losses",
    "run_demo",
    "summary_line",
    "visualize_predictions",
]

logger = logging.getLogger("sa_ejhead.demo")

# relative to sa-ejhead's configs (sa_ejhead.model_zoo), or a file path
DEFAULT_CONFIG = "demo/sa_shapes.py"

# Files that a previous demo run left in its output folder (JSONWriter and log.txt append).
_RUN_FILES = (
    "metrics.json",
    "log.txt",
    "results.json",
    "ap_table.md",
    "loss.png",
    "config.yaml",
    "last_checkpoint",
    "model_final.pth",
)
# a step of the real loop (data loading in a worker process beside the 2 compute threads, hooks,
# logging) over a timed step on one batch: measured 1.20-1.27 on the 2-core machine (docs/demo.md)
_LOOP_OVERHEAD = 1.3
_AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# Pictures show predictions scoring at least this. At Detectron2's usual 0.5 the demo model still
# draws duplicates and confusions in the val images' heavy overlaps (docs/demo.md)
VIS_SCORE_THRESH = 0.7


def _clean_output_dir(output_dir):
    """Remove what a previous demo run wrote (so ``metrics.json`` is not appended to)."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name in _RUN_FILES or name.startswith(("events.out.tfevents", "model_")):
            os.remove(path)
        elif name in ("vis", "inference") and os.path.isdir(path):
            shutil.rmtree(path)


def format_ap_table(results, title=None):
    """COCOEvaluator's ``results`` as a Markdown table: one row per task, AP in percent, after an
    optional ``title`` line."""
    lines = [title, ""] if title else []
    lines.append("| task | " + " | ".join(_AP_KEYS) + " |")
    lines.append("|---|" + "---|" * len(_AP_KEYS))
    for task in ("bbox", "segm"):
        if task in results:
            vals = [results[task].get(k, float("nan")) for k in _AP_KEYS]
            lines.append(f"| {task} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


def plot_losses(metrics_file, out_file):
    """Plot the losses of a Detectron2 ``metrics.json`` into a PNG; return the loss names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_file) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if "total_loss" in r]
    names = ["total_loss"] + sorted({k for r in rows for k in r if k.startswith("loss_")})
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name in names:
        pts = [(r["iteration"], r[name]) for r in rows if name in r]
        if pts:
            it, val = zip(*pts)
            ax.plot(it, val, label=name, linewidth=2.0 if name == "total_loss" else 1.0)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (median of the last 20 iterations)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(os.path.basename(os.path.dirname(os.path.abspath(metrics_file))))
    fig.tight_layout()
    fig.savefig(out_file)
    plt.close(fig)
    return names


def _ap_table_title(cfg, config_file):
    return (
        f"COCO AP (%) on {first_test_dataset(cfg)}, {os.path.basename(config_file)}, "
        f"{cfg.train.max_iter} iterations"
    )


@torch.no_grad()
def visualize_predictions(model, cfg, out_dir, num_images=8, score_thresh=VIS_SCORE_THRESH):
    """Write ``<image>.png`` pictures of the first ``num_images`` images of
    ``cfg.dataloader.test``: ground truth beside the predictions scoring >= ``score_thresh``.

    Returns:
        list[str]: the written files.
    """
    dataset_name = first_test_dataset(cfg)
    meta = MetadataCatalog.get(dataset_name)
    mapper = instantiate(cfg.dataloader.test.mapper)
    os.makedirs(out_dir, exist_ok=True)
    was_training = model.training
    model.eval()
    written = []
    try:
        for d in DatasetCatalog.get(dataset_name)[:num_images]:
            # predictions come back in the original image's coordinates: draw on that image
            instances = model([mapper(dict(d))])[0]["instances"]
            image = read_image(d["file_name"], format="BGR")
            gt = Visualizer(image[:, :, ::-1], meta, scale=2.0).draw_dataset_dict(d).get_image()
            pred, _ = draw_predictions(
                image, instances, meta, score_thresh, scale=2.0, mode=ColorMode.SEGMENTATION
            )
            gap = np.full((gt.shape[0], 8, 3), 255, np.uint8)
            name = os.path.splitext(os.path.basename(d["file_name"]))[0]
            path = os.path.join(out_dir, f"{name}.png")
            cv2.imwrite(path, np.concatenate([gt[:, :, ::-1], gap, pred], axis=1))
            written.append(path)
    finally:
        model.train(was_training)
    return written


def summary_line(results, iters, wall_s, output_dir, files):
    """The one line that ends ``make demo``: the AP, the time and where each output is."""
    ap = ", ".join(
        f"{name} AP {results[task]['AP']:.1f}"
        for task, name in (("bbox", "box"), ("segm", "mask"))
        if task in results
    )
    rel = {k: os.path.relpath(v, output_dir) for k, v in files.items()}
    return (
        f"[demo] {ap} after {iters} iterations in {wall_s / 60:.1f} min; in {output_dir}/: "
        f"table {rel['ap_table']}, loss curve {rel['loss_plot']}, pictures {rel['vis']}/, "
        f"checkpoint {rel['checkpoint']}, metrics {rel['metrics']}"
    )


def _busy_cpus(interval=0.5, stat="/proc/stat"):
    """How many CPUs other processes keep busy now (non-idle share of ``/proc/stat`` time over
    ``interval`` seconds, times the CPU count), or None. Unlike the one-minute load average, it
    sees a machine that has just become idle as idle."""

    def totals():
        with open(stat) as f:
            fields = [float(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        return sum(fields), idle

    try:
        total0, idle0 = totals()
        time.sleep(interval)
        total1, idle1 = totals()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (1.0 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def _auto_threads():
    """One intra-op thread when other processes keep at least half a CPU busy (else, where that
    can't be measured, when the load average >= the CPU count), else PyTorch's default: on the
    2-core machine under a load of ~8, a training step took 33 s with 2 threads and 8 s with 1."""
    busy = _busy_cpus()
    if busy is None:
        try:
            busy = os.getloadavg()[0] - (os.cpu_count() or 1) + 0.5
        except OSError:
            return torch.get_num_threads()
    return 1 if busy >= 0.5 else torch.get_num_threads()


def fit_iterations(cfg, budget_s, num_eval_images, steps=3):
    """The number of iterations (at most ``cfg.train.max_iter``, at least 20) that fit in
    ``budget_s`` seconds with the evaluation of ``num_eval_images`` images.

    The median of ``steps`` timed training steps on one batch (a throw-away model and optimizer),
    times ``_LOOP_OVERHEAD`` (the real loop also loads data, logs and runs hooks), is the time of
    an iteration; evaluation is estimated at one step per batch of images.

    Returns:
        tuple(int, float): iterations, measured seconds per step.
    """
    model = instantiate(cfg.model).to(cfg.train.device)
    opt_cfg = copy.deepcopy(cfg.optimizer)
    opt_cfg.params.model = model
    batch = next(iter(instantiate(cfg.dataloader.train)))
    step = time_training_step(
        model, batch, steps, warmup=1, device=cfg.train.device, optimizer=instantiate(opt_cfg)
    )["median"]
    eval_s = step * num_eval_images / int(cfg.dataloader.train.total_batch_size) + 20.0
    iters = int((budget_s - eval_s) / (_LOOP_OVERHEAD * step))
    return max(min(iters, int(cfg.train.max_iter)), 20), step


def run_demo(
    config_file=DEFAULT_CONFIG,
    *,
    iters=None,
    output_dir=None,
    opts=(),
    num_vis=8,
    threads=None,
    time_budget_min=14.0,
):
    """Train and evaluate a LazyConfig on SA-Shapes; write checkpoint, metrics and pictures.

    Args:
        config_file (str): LazyConfig file, or a path under sa-ejhead's configs.
        iters (int or None): ``train.max_iter``; None keeps the config's.
        output_dir (str or None): None keeps ``train.output_dir``.
        opts (list[str]): more ``key=value`` overrides.
        num_vis (int): number of validation pictures.
        threads (int or None): PyTorch intra-op threads; None: :func:`_auto_threads`.
        time_budget_min (float or None): without ``iters``, train fewer than ``train.max_iter``
            iterations if timed steps show they would not fit, with the evaluation, in this many
            minutes (:func:`fit_iterations`). None: no limit.

    Returns:
        dict: ``results`` (COCO metrics), ``output_dir``, ``wall_s`` and the written ``files``.
    """
    start = time.perf_counter()
    if not os.path.isfile(config_file):
        config_file = get_config_file(config_file)
    cfg = load_lazy_config(config_file, list(opts))
    if iters is not None:
        if iters < 1:
            raise ValueError(f"iters must be >= 1, got {iters}")
        cfg.train.max_iter = int(iters)
    if output_dir is not None:
        cfg.train.output_dir = output_dir
    output_dir = os.path.abspath(cfg.train.output_dir)
    cfg.train.output_dir = output_dir
    _clean_output_dir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    setup_logger(output=os.path.join(output_dir, "log.txt"), name="detectron2", abbrev_name="d2")
    setup_logger(output=os.path.join(output_dir, "log.txt"), name="sa_ejhead")
    LazyConfig.save(cfg, os.path.join(output_dir, "config.yaml"))
    torch.set_num_threads(threads or _auto_threads())
    logger.info(f"PyTorch threads: {torch.get_num_threads()} ({os.cpu_count()} CPUs)")

    t = time.perf_counter()
    info = prepare_sa_shapes()
    for split, s in info["splits"].items():
        logger.info(
            f"SA-Shapes {split}: {s['images']} images, {s['annotations']} objects "
            f"(small {s['sizes']['small']}, medium {s['sizes']['medium']}, "
            f"large {s['sizes']['large']}) [{time.perf_counter() - t:.1f} s]"
        )
    if iters is None and time_budget_min:
        budget = time_budget_min * 60 - (time.perf_counter() - start)
        n_eval = len(DatasetCatalog.get(first_test_dataset(cfg))) + num_vis
        fit, step = fit_iterations(cfg, budget, n_eval)
        logger.info(
            f"Measured {step:.2f} s per training step; {fit} of {cfg.train.max_iter} iterations "
            f"fit in the {time_budget_min:g}-minute budget (make demo ITERS=N to choose)"
        )
        cfg.train.max_iter = fit
    logger.info(f"Training {os.path.relpath(config_file)} for {cfg.train.max_iter} iterations")
    trained = {}  # the model, to draw its predictions afterwards
    keep = hooks.CallbackHook(after_train=lambda trainer: trained.update(model=trainer.model))
    results = do_train(cfg, resume=False, extra_hooks=[keep])

    files = {"checkpoint": os.path.join(output_dir, "model_final.pth")}
    files["results"] = os.path.join(output_dir, "results.json")
    with open(files["results"], "w") as f:
        json.dump(results, f, indent=2)
    files["ap_table"] = os.path.join(output_dir, "ap_table.md")
    table = format_ap_table(results, _ap_table_title(cfg, config_file))
    with open(files["ap_table"], "w") as f:
        f.write(table)
    files["metrics"] = os.path.join(output_dir, "metrics.json")
    files["loss_plot"] = os.path.join(output_dir, "loss.png")
    plot_losses(files["metrics"], files["loss_plot"])
    files["vis"] = os.path.join(output_dir, "vis")
    vis = visualize_predictions(trained["model"], cfg, files["vis"], num_vis)
    wall = time.perf_counter() - start

    print("\n" + table)
    print(f"Demo finished in {wall / 60:.1f} min. Outputs in {output_dir}:")
    for key in ("checkpoint", "metrics", "results", "ap_table", "loss_plot"):
        print(f"  {key:<11} {files[key]}")
    print(
        f"  {'pictures':<11} {files['vis']}/ ({len(vis)} files, e.g. {os.path.basename(vis[0])})"
        if vis
        else f"  pictures    {files['vis']}/"
    )
    print(summary_line(results, cfg.train.max_iter, wall, output_dir, files))
    return {"results": results, "output_dir": output_dir, "wall_s": wall, "files": files}
