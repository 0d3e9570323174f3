#!/usr/bin/env python3
"""``make demo``: fine-tune SA-FPN + EJ-Head on the embedded SA-Shapes data on the CPU, evaluate
it and write the checkpoint, metrics, AP table, loss curve and pictures (docs/demo.md).

Examples::

    .venv/bin/python tools/train_demo.py               # the full schedule (output/demo/)
    .venv/bin/python tools/train_demo.py --iters 300   # shorter, on purpose: make demo ITERS=300
    .venv/bin/python tools/train_demo.py --config configs/demo/sa_shapes_baseline.py

It always trains the config's whole schedule (``train.max_iter``, 1200 for the demo), however
busy the machine: only ``--iters`` shortens it, and the run then says so. Detectron2 prints the
iteration, the seconds per iteration (``time:``) and the remaining time (``eta:``) every
``train.log_period`` (20) iterations. With the same thread count, a second run prints the same
AP up to float non-determinism (docs/demo.md, "Reproducibility").

Written to the output folder (``train.output_dir``, emptied of a previous run's files first):
``model_final.pth``, ``metrics.json`` (Detectron2's metrics), ``results.json`` and
``ap_table.md`` (the COCO AP), ``loss.png`` (the loss curves), ``vis/*.png`` (validation images:
ground truth left, predictions right), ``config.yaml`` and ``log.txt``.

(``tools/demo.py`` draws a trained model's predictions on your own images.)
"""

import argparse
import json
import logging
import os
import shutil
import sys
import time

import cv2
import numpy as np
import torch
import sa_ejhead  # noqa: F401  (first: it keeps Detectron2's import-time warnings quiet)
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog
from detectron2.engine import hooks
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer

from sa_ejhead.engine import do_train, load_lazy_config, set_config_weights
from sa_ejhead.engine.args import add_debug_argument
from sa_ejhead.errors import run_tool
from sa_ejhead.model_zoo import get_config_file
from sa_ejhead.predictor import Predictor, read_image

logger = logging.getLogger("sa_ejhead.tools.train_demo")

DEFAULT_CONFIG = "demo/sa_shapes.py"  # relative to sa-ejhead's configs, or a file path
# Pictures show predictions scoring at least this: at Detectron2's usual 0.5 the demo model still
# draws duplicates and confusions in the val images' heavy overlaps (docs/demo.md).
VIS_SCORE_THRESH = 0.7
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# What a previous run left in the output folder (JSONWriter and log.txt append).
RUN_FILES = ("metrics.json", "log.txt", "results.json", "ap_table.md", "loss.png", "config.yaml")
RUN_FILES += ("last_checkpoint", "model_final.pth")


def clean_output_dir(output_dir):
    """Remove what a previous demo run wrote (so that ``metrics.json`` is not appended to)."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name in RUN_FILES or name.startswith(("events.out.tfevents", "model_")):
            os.remove(path)
        elif name in ("vis", "inference") and os.path.isdir(path):
            shutil.rmtree(path)


def format_ap_table(results, title):
    """COCOEvaluator's ``results`` as a Markdown table after a title line: one row per task, AP
    in percent."""
    lines = [title, "", "| task | " + " | ".join(AP_KEYS) + " |", "|---|" + "---|" * len(AP_KEYS)]
    for task in ("bbox", "segm"):
        if task in results:
            vals = [results[task].get(k, float("nan")) for k in AP_KEYS]
            lines.append(f"| {task} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


def plot_losses(metrics_file, out_file):
    """Plot the losses of a Detectron2 ``metrics.json`` into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_file) as f:
        rows = [r for r in map(json.loads, filter(str.strip, f)) if "total_loss" in r]
    names = ["total_loss"] + sorted({k for r in rows for k in r if k.startswith("loss_")})
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name in names:
        pts = [(r["iteration"], r[name]) for r in rows if name in r]
        if pts:
            ax.plot(*zip(*pts), label=name, linewidth=2.0 if name == "total_loss" else 1.0)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (median of the last 20 iterations)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(os.path.basename(os.path.dirname(os.path.abspath(metrics_file))))
    fig.tight_layout()
    fig.savefig(out_file)
    plt.close(fig)


def draw_pictures(predictor, dataset_name, out_dir, num_images, score_thresh=VIS_SCORE_THRESH):
    """Write ``<image>.png`` for the first ``num_images`` images of a dataset: the ground truth
    (left) beside the ``predictor``'s predictions scoring >= ``score_thresh`` (right).

    Returns:
        list[str]: the written files.
    """
    os.makedirs(out_dir, exist_ok=True)
    meta, written = predictor.metadata, []
    for d in DatasetCatalog.get(dataset_name)[:num_images]:
        image = read_image(d["file_name"], format="BGR")
        instances = predictor(image)["instances"].to("cpu")
        instances = instances[instances.scores >= score_thresh]
        rgb = image[:, :, ::-1]
        gt = Visualizer(rgb, meta, scale=2.0).draw_dataset_dict(d).get_image()
        pred = Visualizer(rgb, meta, scale=2.0, instance_mode=ColorMode.SEGMENTATION)
        pred = pred.draw_instance_predictions(instances).get_image()
        gap = np.full((gt.shape[0], 8, 3), 255, np.uint8)
        name = os.path.splitext(os.path.basename(d["file_name"]))[0]
        written.append(os.path.join(out_dir, f"{name}.png"))
        cv2.imwrite(written[-1], np.concatenate([gt, gap, pred], axis=1)[:, :, ::-1])
    return written


def _log_datasets(cfg):
    """One line per dataset (generating SA-Shapes the first time)."""
    names = cfg.dataloader.train.dataset.names
    names = [names] if isinstance(names, str) else list(names)
    for name in names + [cfg.dataloader.test.dataset.names]:
        t = time.perf_counter()
        dicts = DatasetCatalog.get(name)
        objects = sum(len(d.get("annotations", [])) for d in dicts)
        logger.info(
            f"{name}: {len(dicts)} images, {objects} objects [{time.perf_counter() - t:.1f} s]"
        )


def run_demo(
    config_file=DEFAULT_CONFIG, *, iters=None, output_dir=None, opts=(), num_vis=8, threads=None
):
    """Train and evaluate a LazyConfig; write checkpoint, metrics, AP table, loss curve and
    pictures.

    Args:
        config_file (str): LazyConfig file, or a path under sa-ejhead's configs.
        iters (int or None): train this many iterations instead of the config's
            ``train.max_iter`` (a shortened run, which the log and the summary line say).
        output_dir (str or None): None keeps ``train.output_dir``.
        opts (list[str]): more ``key=value`` overrides.
        num_vis (int): number of validation pictures.
        threads (int or None): PyTorch intra-op threads; None: PyTorch's default, one per core,
            whatever the machine's load. The AP depends on it slightly, through the float
            summation order (docs/demo.md).

    Returns:
        dict: ``results`` (COCO metrics), ``iterations``, ``s_per_iter``, ``wall_s`` and the
        written ``files``.
    """
    start = time.perf_counter()
    if not os.path.isfile(config_file):
        config_file = get_config_file(config_file)
    cfg = load_lazy_config(config_file, list(opts))
    schedule = int(cfg.train.max_iter)
    if iters is not None:
        cfg.train.max_iter = int(iters)
    output_dir = os.path.abspath(output_dir or cfg.train.output_dir)
    cfg.train.output_dir = output_dir
    clean_output_dir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    log_file = os.path.join(output_dir, "log.txt")
    setup_logger(output=log_file, name="detectron2", abbrev_name="d2")
    setup_logger(output=log_file, name="sa_ejhead")
    LazyConfig.save(cfg, os.path.join(output_dir, "config.yaml"))
    if threads:
        torch.set_num_threads(threads)
    logger.info(
        f"PyTorch threads: {torch.get_num_threads()} ({os.cpu_count()} CPUs; --threads N sets it, "
        "e.g. 1 on a busy machine: faster there, and the AP differs slightly)"
    )
    _log_datasets(cfg)

    iterations = int(cfg.train.max_iter)
    if iterations != schedule:
        logger.warning(
            f"--iters {iterations}: training {iterations} iterations instead of the config's "
            f"{schedule}, on purpose; the AP is not the full schedule's (docs/demo.md)"
        )
    logger.info(
        f"Training {os.path.relpath(config_file)} for {iterations} iterations; every "
        f"{cfg.train.log_period} iterations a line gives the iteration, the ETA (eta:) and the "
        "seconds per iteration (time:)"
    )
    timing = {}  # Detectron2's IterationTimer: seconds per iteration, the first 3 left out
    record = hooks.CallbackHook(
        after_train=lambda trainer: timing.update(trainer.storage.histories())
    )
    results = do_train(cfg, resume=False, extra_hooks=[record])
    s_per_iter = timing["time"].global_avg() if "time" in timing else float("nan")

    files = {"checkpoint": os.path.join(output_dir, "model_final.pth")}
    files["metrics"] = os.path.join(output_dir, "metrics.json")
    files["results"] = os.path.join(output_dir, "results.json")
    with open(files["results"], "w") as f:
        json.dump(results, f, indent=2)
    files["ap_table"] = os.path.join(output_dir, "ap_table.md")
    test_set = cfg.dataloader.test.dataset.names
    title = f"COCO AP (%) on {test_set}, {os.path.basename(config_file)}, {iterations} iterations"
    table = format_ap_table(results, title)
    with open(files["ap_table"], "w") as f:
        f.write(table)
    files["loss_plot"] = os.path.join(output_dir, "loss.png")
    plot_losses(files["metrics"], files["loss_plot"])
    files["vis"] = os.path.join(output_dir, "vis")
    set_config_weights(cfg, files["checkpoint"])
    vis = draw_pictures(Predictor(cfg), test_set, files["vis"], num_vis)
    wall = time.perf_counter() - start

    print("\n" + table)
    print(f"Demo finished in {wall / 60:.1f} min. Outputs in {output_dir}:")
    for key in ("checkpoint", "metrics", "results", "ap_table", "loss_plot"):
        print(f"  {key:<11} {files[key]}")
    print(f"  {'pictures':<11} {files['vis']}/ ({len(vis)} files)")
    ap = ", ".join(
        f"{name} AP {results[task]['AP']:.1f}"
        for task, name in (("bbox", "box"), ("segm", "mask"))
        if task in results
    )
    done = f"{iterations} iterations"
    if iterations != schedule:
        done += f" (--iters {iterations}; the full schedule is {schedule})"
    rel = {k: os.path.relpath(v, output_dir) for k, v in files.items()}
    print(
        f"[demo] {ap} after {done} at {s_per_iter:.2f} s/iteration in "
        f"{wall / 60:.1f} min; in {output_dir}/: table {rel['ap_table']}, loss curve "
        f"{rel['loss_plot']}, pictures {rel['vis']}/, checkpoint {rel['checkpoint']}, metrics "
        f"{rel['metrics']}"
    )
    return dict(
        results=results, iterations=iterations, s_per_iter=s_per_iter, wall_s=wall, files=files
    )


def _positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help="LazyConfig file, or a path under configs/"
    )
    parser.add_argument(
        "--iters", type=_positive, default=None, help="train fewer iterations than the config's"
    )
    parser.add_argument("--output-dir", default=None, help="default: the config's train.output_dir")
    parser.add_argument("--num-vis", type=int, default=8, help="validation pictures to draw")
    parser.add_argument(
        "--threads",
        type=_positive,
        default=None,
        help="PyTorch threads (default: one per core; 1 is faster on a busy machine)",
    )
    add_debug_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    return run_tool(
        lambda: run_demo(
            args.config,
            iters=args.iters,
            output_dir=args.output_dir,
            opts=args.opts,
            num_vis=args.num_vis,
            threads=args.threads,
        ),
        debug=args.debug,
        tool="train_demo",
    )


if __name__ == "__main__":
    sys.exit(main())
