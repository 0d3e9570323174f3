#!/usr/bin/env python
"""Cost of detection configs vs the first one: parameters, FLOPs, latency, train step, memory.

Examples::

    # the README's cost table
    python tools/benchmark.py --configs \\
        "Mask R-CNN R50-FPN=d2://common/models/mask_rcnn_fpn.py" \\
        "SA-FPN + EJ-Head=common/models/mask_rcnn_safpn_ejhead.py,model.roi_heads.threaded_pooling=True" \\
        "efficient=common/models/mask_rcnn_safpn_ejhead_efficient.py,model.roi_heads.threaded_pooling=True,model.roi_heads.threaded_inference_pooling=False"
    # the neck table of docs/safpn.md, the ROI-head table of docs/ejhead.md (FLOPs only)
    python tools/benchmark.py --variants necks
    python tools/benchmark.py --variants heads
    # pycocotools' COCOeval against faster-coco-eval
    python tools/benchmark.py --coco-eval
    # self CPU time per op (torch.profiler), inference and training, vs the first config
    python tools/benchmark.py --profile --threads 2 --configs \\
        "base=d2://common/models/mask_rcnn_fpn.py" \\
        "efficient=common/models/mask_rcnn_safpn_ejhead_efficient.py,model.roi_heads.threaded_pooling=True,model.roi_heads.threaded_inference_pooling=False"

Config specs: ``[LABEL=]SOURCE[,KEY=VALUE...]`` (projects/lab/sa_ejhead_lab/specs.py). What is
measured and how: the measurement lab, projects/lab/sa_ejhead_lab/, and docs/benchmark.md.
"""

import argparse
import json
import logging
import os
import sys

import torch

from sa_ejhead.engine.args import add_debug_argument
from sa_ejhead.errors import run_tool

LAB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "projects", "lab")
if LAB not in sys.path:
    sys.path.insert(0, LAB)

from sa_ejhead_lab import coco_eval, measure, report, specs  # noqa: E402


def _size(text):
    parts = [int(v) for v in text.lower().replace("x", " ").replace(",", " ").split()]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected HxW or N")
    return tuple(parts)


def get_parser():
    parser = argparse.ArgumentParser(
        description="Parameters, FLOPs, CPU (and CUDA) latency, training-step time and peak "
        "memory of detection configs, as Markdown tables with ratios to the first config.",
        epilog="Config spec: [LABEL=]SOURCE[,KEY=VALUE...]; SOURCE is d2://PATH (Detectron2's "
        "model zoo), a .py/.yaml file, or a path under sa-ejhead's configs/. Example: "
        "--configs base=d2://common/models/mask_rcnn_fpn.py "
        "ours=common/models/mask_rcnn_safpn_ejhead.py",
    )
    parser.add_argument("--configs", nargs="*", default=[], metavar="SPEC")
    parser.add_argument(
        "--variants",
        choices=sorted(specs.VARIANTS),
        help="count the parameters and FLOPs of the neck or ROI-head settings (specs.VARIANTS) "
        "and print their table",
    )
    parser.add_argument("--input-size", type=_size, default=(800, 1216), metavar="HxW")
    parser.add_argument("--proposals", type=int, default=1000, help="RoIs per image (test)")
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--runs", type=int, default=3, help="timed inference runs (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs/steps first")
    parser.add_argument("--train-size", type=_size, default=(512, 512), metavar="HxW")
    parser.add_argument("--train-batch", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="interleaved repeats: measure every config once per round, in turn, and pool the "
        "rounds (medians and minima over all runs, peak memory = median of the rounds' peaks), "
        "so that a machine whose speed drifts moves every config alike",
    )
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument(
        "--no-infer",
        action="store_true",
        help="skip parameters, FLOPs, latency and inference memory (training step only)",
    )
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOPs count")
    parser.add_argument("--no-cuda", action="store_true", help="skip CUDA even if present")
    parser.add_argument(
        "--no-isolate",
        action="store_true",
        help="measure in this process (peak memory is then polluted by earlier configs)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the cost table, profile the self CPU time per op (torch.profiler) over "
        "--runs inference forwards and --train-steps training steps after --warmup, and print, "
        "per phase, each op's time per config and its difference to the first config "
        "(sa_ejhead_lab/profile.py)",
    )
    parser.add_argument(
        "--profile-threshold",
        type=float,
        default=0.02,
        help="--profile: mark the ops whose time differs from the first config's by more than "
        "this share of the first config's total (default 0.02)",
    )
    parser.add_argument(
        "--profile-top",
        type=int,
        default=25,
        help="--profile: list the marked ops and this many of the slowest; sum the others",
    )
    parser.add_argument("--coco-eval", action="store_true", help="time COCO evaluation too")
    parser.add_argument("--coco-eval-images", type=int, default=500)
    parser.add_argument("--coco-eval-dets", type=int, default=100)
    parser.add_argument(
        "--deploy",
        action="store_true",
        help="also export each config to TorchScript and ONNX and time eager, TorchScript and "
        "onnxruntime on the CPU side by side, with the exports' parity (sa_ejhead_lab/deploy.py)",
    )
    parser.add_argument(
        "--paired",
        type=int,
        default=0,
        metavar="N",
        help="also time all configs in one process, in turns, N calls each, and report the "
        "median of the per-call ratios to the first config (the estimate least moved by a "
        "machine whose speed drifts)",
    )
    parser.add_argument("--output", default="", help="also write all figures as JSON here")
    return add_debug_argument(parser)


def _how(args, phases):
    """How the figures were measured, printed above the tables."""
    how = []
    if "infer" in phases:
        h, w = args.input_size
        how.append(
            f"FLOPs (fvcore, 1 multiply-add = 1 FLOP) and latency at {h}x{w}, batch 1, "
            f"{args.proposals} proposals and {args.detections} detections per image; latency = "
            f"median of {args.runs} runs after {args.warmup} warm-up (CPU time/run: process CPU "
            "seconds, all threads)"
        )
    if args.rounds > 1 and not args.profile:
        how.append(
            f"{args.rounds} interleaved rounds (every config in turn, each round in fresh "
            "processes): medians and minima over the runs of all rounds, peak RSS = median of the "
            "rounds' peaks"
        )
    if "profile_infer" in phases:
        h, w = args.input_size
        how.append(
            f"inference profile: {args.runs} forwards after {args.warmup} warm-up at {h}x{w}, "
            f"batch 1, {args.proposals} proposals and {args.detections} detections per image"
        )
    if "profile_train" in phases:
        h, w = args.train_size
        how.append(
            f"training profile: {args.train_steps} SGD steps after {args.warmup} warm-up at "
            f"{h}x{w}, batch {args.train_batch}, random ground truth"
        )
    if args.profile:
        where = "this process" if args.no_isolate else "a fresh process"
        return "; ".join(how) + f"; each config in {where}."
    if "train" in phases:
        h, w = args.train_size
        how.append(
            f"train step = median of {args.train_steps} SGD steps after {args.warmup} warm-up at "
            f"{h}x{w}, batch {args.train_batch}, random ground truth"
        )
    how.append("peak RSS = peak resident memory above the model's, each config in a fresh process")
    return "; ".join(how) + "."


def main(argv=None):
    """Measure, print the tables, and return every figure.

    Returns:
        dict: ``options``, ``configs`` (per-config figures) and ``coco_eval`` (timings).
    """
    parser = get_parser()
    args = parser.parse_args(argv)
    if not args.configs and not args.coco_eval and not args.variants:
        parser.error("nothing to do: give --configs, --variants and/or --coco-eval")
    if args.configs and args.variants:
        parser.error("give --configs or --variants, not both")
    if args.profile and (args.variants or args.deploy or not args.configs):
        parser.error("--profile needs --configs (and neither --variants nor --deploy)")
    if args.paired < 0 or (args.paired and (args.profile or args.variants)):
        parser.error("--paired must be >= 0, and 0 with --profile or --variants")
    if args.rounds < 1 or (args.rounds > 1 and (args.profile or args.variants)):
        parser.error("--rounds must be >= 1, and 1 with --profile or --variants")
    if args.threads:
        torch.set_num_threads(args.threads)
    options = {
        "input_size": args.input_size,
        "proposals": args.proposals,
        "detections": args.detections,
        "runs": 0 if args.variants else args.runs,
        "warmup": args.warmup,
        "train_size": args.train_size,
        "train_batch": args.train_batch,
        "train_steps": args.train_steps,
        "threads": args.threads or torch.get_num_threads(),
        "rounds": args.rounds,
        "paired": args.paired,
        "flops": not args.no_flops and not args.profile,
        "cuda": not args.no_cuda and not args.variants and not args.profile,
    }
    phases = tuple(
        p for p, skip in (("infer", args.no_infer), ("train", args.no_train)) if not skip
    )
    if args.profile:
        phases = tuple(f"profile_{p}" for p in phases)
        options["profile_threshold"] = args.profile_threshold
    if args.variants:
        phases = ("infer",)  # parameters and FLOPs only, in this process
    if args.variants:
        config_specs = specs.variant_specs(args.variants)
    else:
        config_specs = [specs.parse_spec(s) for s in args.configs]
    if config_specs and not phases and not args.deploy:
        parser.error("--no-infer and --no-train leave nothing to measure")
    result = {"options": options, "configs": [], "coco_eval": []}
    if config_specs:
        isolate = not (args.no_isolate or args.variants)
        result["configs"] = measure.measure(
            config_specs, options, isolate, phases, rounds=args.rounds
        )
        print("\n" + report.describe_machine(options["threads"]))
        if args.variants:
            h, w = args.input_size
            print(
                f"Parameters and FLOPs (fvcore, 1 GFLOP = 1e9 multiply-adds) at {h}x{w}, "
                f"{args.proposals} proposals and {args.detections} detections per image.\n"
            )
            print(report.format_variant_table(args.variants, result["configs"]))
        elif args.profile:
            print(_how(args, phases) + "\n")
            print(
                report.format_profile_tables(
                    result["configs"], args.profile_threshold, args.profile_top
                )
            )
        else:
            print(_how(args, phases) + "\n")
            print(report.format_cost_table(result["configs"]))
        if args.paired and len(config_specs) > 1:
            print(f"[benchmark] paired: every config in one process, {args.paired} calls each ...")
            result["paired"] = measure.measure_paired(config_specs, options, phases)
            print(
                f"\nPaired, in one process: the configs take turns, one call each, "
                f"{args.paired} calls after {args.warmup} warm-up; ratio = median of the per-call "
                "ratios to the first config (range):\n"
            )
            print(report.format_paired_table(result["paired"]))
        for row in result["configs"]:
            for kind, expected in (("proposals", args.proposals), ("detections", args.detections)):
                seen = report.get(row, f"flops.counts.{kind}") or report.get(row, f"counts.{kind}")
                if any(n != expected for n in seen or []):
                    print(f"\nWARNING: {row['label']}: {kind} per image {seen} != {expected}")
        if args.deploy:
            from sa_ejhead_lab.deploy import measure_deploy_configs

            print("[benchmark] deploy: export, then eager / TorchScript / onnxruntime ...")
            for row, figures in zip(
                result["configs"], measure_deploy_configs(config_specs, options)
            ):
                row["deploy"] = figures
            h, w = args.input_size
            print(f"\nDeployment (docs/deploy.md), {h}x{w}, the cost table's RoI counts:\n")
            print(report.format_deploy_table(result["configs"]))
    if args.coco_eval:
        result["coco_eval"] = coco_eval.time_coco_eval(args.coco_eval_images, args.coco_eval_dets)
        print("\nCOCO evaluation time on a synthetic results file (single process):\n")
        print(report.format_coco_eval_table(result["coco_eval"]))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1, default=str)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(run_tool(main, debug="--debug" in sys.argv))
