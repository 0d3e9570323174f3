#!/usr/bin/env python
"""CPU ablation: the embedded-data analogue of every row of the paper's Tables 2-5.

Trains each row's demo-sized config on ``sa_shapes_train`` for ``--iters`` iterations with each
of ``--seeds``, evaluates on ``sa_shapes_val`` (COCO box and mask AP, AP_S/M/L) and writes the
tables of mean ± std over the seeds, laid out like the paper's, and (protocol v2) a verdict on
each of the paper's claims. ``--protocol`` picks the rows' configs and the results store
(``ablation/protocols.py``): ``v2`` (default; pre-trained backbone, COCO-like RoI geometry, the
short schedule), ``v1`` (from scratch; finished and pinned) or ``v3`` (v2's rows at the pilot's
rate and length, the equal-cost baselines and the frontier plot; ``ablation/v3.py``).

Runs and results: see ``ablation/store.py``. A rerun skips finished runs; ``--resume``
continues unfinished ones from their last checkpoint; ``--table-only`` builds the tables from
whatever finished. ``--jobs N`` runs N trainings at once, each on ``cores // N`` torch threads.

Examples::

    python projects/cpu_ablation/run_ablation.py --tables 2 4 --jobs 2 --resume
    python projects/cpu_ablation/run_ablation.py --table-only --markdown docs/measurements/ablation/v2.md
    python projects/cpu_ablation/run_ablation.py --protocol v3 --jobs 2 --resume
    python projects/cpu_ablation/run_ablation.py --protocol v3 --table-only --markdown docs/ablation.md
    python projects/cpu_ablation/run_ablation.py --protocol v1 --tables D --table-only
"""

import argparse
import concurrent.futures
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LAB = os.path.join(os.path.dirname(HERE), "lab")
for path in (HERE, LAB):
    if path not in sys.path:
        sys.path.insert(0, path)

from ablation import v3  # noqa: E402
from ablation.protocols import DEVICES, PROTOCOLS, REPO_ROOT  # noqa: E402
from ablation.store import evaluation_curve, seconds_per_iteration  # noqa: E402
from ablation.tables import configs_of, format_tables, verdicts, write_markdown  # noqa: E402

FRONTIER_PNG = os.path.join("docs", "images", "ablation_frontier.png")
TIMING_COMMAND = "python projects/cpu_ablation/time_rows.py"


def make_store(args):
    """The protocol's :class:`ResultStore` (``Protocol.store``) for the command line's
    ``--opts``, ``--device`` and directories."""
    return PROTOCOLS[args.protocol].store(args.opts, args.device, args.output_dir, args.results_dir)


def run_one(store, config, seed, iters, resume, checkpoint_period, threads=0, overrides=()):
    """Train and evaluate one config/seed in this process; store its results (atomically)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)

    directory = store.run_dir(config, seed, iters)
    os.makedirs(directory, exist_ok=True)
    # two sweeps may share a store (e.g. one per core, with overlapping lists): a finished run is
    # not run again, and a run that another live process holds is left to it
    if store.load(config, seed, iters) is not None:
        print(f"[ablation] {config} seed {seed}: already finished")
        return
    lock = _take_lock(directory)
    if lock is None:
        print(f"[ablation] {config} seed {seed}: running in another process")
        return
    try:
        _train(store, config, seed, iters, resume, checkpoint_period, directory, overrides)
    finally:
        os.remove(lock)


def _take_lock(directory):
    """Create ``directory/run.lock`` holding this pid; None if a live process holds it."""
    path = os.path.join(directory, "run.lock")
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path) as f:
                    os.kill(int(f.read().strip() or 0), 0)  # raises if no such process
                return None
            except (OSError, ValueError):
                os.remove(path)  # a stale lock, left by a killed run
                continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return path
    return None


def _train(store, config, seed, iters, resume, checkpoint_period, directory, overrides):
    """Train and evaluate one run in this process; store its results."""
    import torch
    from detectron2.utils.logger import setup_logger
    from sa_ejhead_lab.report import describe_machine

    from sa_ejhead.engine import do_train, load_lazy_config

    setup_logger(directory, name="detectron2")
    cfg = load_lazy_config(
        store.config_file(config),
        [
            f"train.max_iter={iters}",
            f"train.seed={seed}",
            f"train.output_dir={directory}",
            "train.device=cpu",
            f"train.checkpointer.period={checkpoint_period}",
        ]
        + list(overrides)
        + list(store.opts),
    )
    # whether this process continues an interrupted run (a checkpoint was left by an earlier one)
    resumed = bool(resume) and os.path.isfile(os.path.join(directory, "last_checkpoint"))
    start = time.time()
    results = do_train(cfg, resume=resume)
    if not results:
        raise RuntimeError(f"{config} seed {seed}: training finished without evaluation results")
    store.save(
        config,
        seed,
        iters,
        {
            "config": config,
            "seed": seed,
            "iters": iters,
            "wall_s": time.time() - start,
            "resumed": resumed,
            "torch_threads": torch.get_num_threads(),
            "device": str(cfg.train.device),
            "machine": describe_machine(torch.get_num_threads()),
            "sec_per_iter": seconds_per_iteration(directory),
            "opts": list(store.opts),
            "config_hash": store.hash(config),
            "bbox": dict(results.get("bbox", {})),
            "segm": dict(results.get("segm", {})),
            # evaluations during training, with --opts train.eval_period=N
            "curve": evaluation_curve(directory),
        },
    )


def get_parser():
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="v2", choices=sorted(PROTOCOLS))
    parser.add_argument(
        "--tables", nargs="+", default=None, help="which tables (default: the protocol's)"
    )
    parser.add_argument(
        "--configs",
        nargs="*",
        default=None,
        help="only these configs: their runs, table rows and claims",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--iters", type=int, default=None, help="iterations per run (default: the protocol's)"
    )
    parser.add_argument("--output-dir", default=None, help="run directories (logs, checkpoints)")
    parser.add_argument(
        "--results-dir",
        default=None,
        help="store of finished runs' results (default: the protocol's, committed); '' for none",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="trainings at once (each on cores // jobs threads)"
    )
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--resume", action="store_true", help="continue unfinished runs from their last checkpoint"
    )
    parser.add_argument(
        "--table-only", action="store_true", help="only build the tables from the finished runs"
    )
    parser.add_argument(
        "--markdown",
        nargs="*",
        default=[],
        help="also write the tables (and verdicts) into these files, between the protocol's "
        "markers",
    )
    parser.add_argument(
        "--markers",
        default=None,
        help="name of the Markdown markers (default: the protocol's; e.g. another for the "
        "diagnostics' tables)",
    )
    parser.add_argument(
        "--pin", action="store_true", help="pin the current hashes of the tables' configs"
    )
    parser.add_argument(
        "--plot",
        default=None,
        help=f"v3: the frontier plot's PNG (default: {FRONTIER_PNG} on the CPU, none on cuda; "
        "'' for none)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=DEVICES,
        help="where the runs train; cuda runs have their own key and store (RESULTS_cuda/), "
        "never averaged with CPU runs (ablation/protocols.py, Protocol.store)",
    )
    parser.add_argument("--checkpoint-period", type=int, default=100)
    parser.add_argument(
        "--opts", nargs="*", default=[], help="config overrides KEY=VALUE for every run"
    )
    parser.add_argument("--run-one", nargs=2, metavar=("CONFIG", "SEED"), help=argparse.SUPPRESS)
    return parser


def _run_subprocess(args, config, seed, iters, threads):
    """Train one config/seed for ``iters`` iterations in a subprocess (output appended to the
    run's ``stdout.txt``)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--run-one", config, str(seed)]
    cmd += ["--protocol", args.protocol, "--iters", str(iters)]
    cmd += ["--output-dir", args.output_dir or PROTOCOLS[args.protocol].output_dir]
    if args.results_dir is not None:
        cmd += ["--results-dir", args.results_dir]
    cmd += ["--checkpoint-period", str(args.checkpoint_period), "--threads", str(threads)]
    cmd += ["--device", args.device]
    if args.resume:
        cmd.append("--resume")
    if args.opts:
        cmd += ["--opts"] + list(args.opts)
    log = os.path.join(make_store(args).run_dir(config, seed, iters), "stdout.txt")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log, "a") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    return rc, log


def available_cores():
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def run_sweep(args, todo):
    """Run the (config, seed, iterations) triples of ``todo``, ``args.jobs`` at a time, in plan
    order."""
    jobs = max(1, args.jobs)
    threads = max(1, available_cores() // jobs)
    lengths = sorted({n for _, _, n in todo})
    print(
        f"[ablation] {len(todo)} runs to do ({'/'.join(map(str, lengths))} iterations, "
        f"{jobs} at once, {threads} torch thread(s) each)",
        flush=True,
    )
    done = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {
            pool.submit(_run_subprocess, args, c, s, n, threads): (c, s, n) for c, s, n in todo
        }
        for future in concurrent.futures.as_completed(futures):
            config, seed, n = futures[future]
            rc, log = future.result()
            done += 1
            status = "done" if rc == 0 else f"FAILED (rc={rc}, see {log})"
            print(
                f"[ablation] {done}/{len(todo)} {config} seed {seed} ({n} it): {status}", flush=True
            )


def main(argv=None):
    """Run the missing runs (each in a subprocess), then print (and write) the tables."""
    args = get_parser().parse_args(argv)
    protocol = PROTOCOLS[args.protocol]
    args.iters = args.iters or protocol.iters
    store = make_store(args)
    if args.run_one:
        config, seed = args.run_one[0], int(args.run_one[1])
        run_one(
            store,
            config,
            seed,
            args.iters,
            args.resume,
            args.checkpoint_period,
            args.threads,
            protocol.run_overrides,
        )
        return 0
    tables = args.tables or list(protocol.default_tables)
    unknown = [t for t in tables if t not in protocol.tables]
    if unknown:
        raise SystemExit(
            f"Unknown table(s) {unknown} for protocol {protocol.name}; "
            f"expected some of {sorted(protocol.tables)}"
        )
    configs = args.configs or configs_of(protocol, tables)
    for c in configs:
        if not store.has_config(c):
            raise SystemExit(f"Unknown config {c!r}: no {c}.py in {store.config_dir}")
    if protocol.name == "v3":
        if args.pin:
            raise SystemExit(
                "--pin: v3's runs have an override in their key; pins hold only without one"
            )
        return main_v3(args, protocol, store, configs)
    copied = store.publish(configs, args.seeds, args.iters)
    if copied:
        print(f"[ablation] copied {copied} finished result(s) to {store.results_dir}")
    if args.pin:
        print(f"[ablation] pinned: {store.pin(configs)}")
    if not args.table_only and not args.pin:
        run_sweep(
            args, [(c, s, args.iters) for c, s in store.plan(configs, args.seeds, args.iters)]
        )
    # --configs also limits the tables' rows and the claims to those configs
    only = args.configs or None
    # the files first, so that a closed stdout (e.g. piped into head) cannot leave them stale
    for path in args.markdown:
        # the config links are relative to the Markdown file
        link_root = os.path.relpath(REPO_ROOT, os.path.dirname(os.path.abspath(path)))
        link_root = "" if link_root == "." else link_root.replace(os.sep, "/") + "/"
        text = format_tables(protocol, store, tables, args.seeds, args.iters, link_root, only)
        markers = args.markers or protocol.markers
        write_markdown(path, text, markers)
        if protocol.claims:
            write_markdown(
                path,
                verdicts(protocol, store, args.seeds, args.iters, tables, only),
                markers + "-verdicts",
            )
    print(format_tables(protocol, store, tables, args.seeds, args.iters, configs=only))
    if protocol.claims:
        print("\n" + verdicts(protocol, store, args.seeds, args.iters, tables, only))
    return 0


def _link_root(path):
    """The repository root relative to the Markdown file ``path`` (its links are relative)."""
    link_root = os.path.relpath(REPO_ROOT, os.path.dirname(os.path.abspath(path)))
    return "" if link_root == "." else link_root.replace(os.sep, "/") + "/"


def main_v3(args, protocol, store, configs):
    """Protocol v3: the runs in the sweep's order (``ablation/v3.py``, plan_runs), then the pilot,
    the rows, the verdicts, the equal-cost rows and the frontier (plot and points)."""
    timing = v3.read_timing(store.results_dir)
    runs = v3.plan_runs(configs, args.seeds, args.iters, timing)
    copied = sum(store.publish([c], [s], n) for c, s, n in runs)
    if copied:
        print(f"[ablation] copied {copied} finished result(s) to {store.results_dir}")
    if timing is None:
        print(f"[ablation] no {v3.TIMING_FILE}: the equal-cost rows wait for {TIMING_COMMAND}")
    if not args.table_only:
        decision = v3.pilot_decision(v3.pilot_lookup(store), chosen=(v3.key_lr(store), args.iters))
        if decision["status"] != "chosen":
            print(f"[ablation] the pilot's rule: {decision['status']} (docs/ablation.md, Pilot)")
        print("[ablation] " + v3.sweep_progress(store, runs, timing).replace("**", ""))
        run_sweep(args, [r for r in runs if store.load(*r) is None])
    only = args.configs or None
    plot = args.plot
    if plot is None:  # the committed plot is the CPU's
        plot = os.path.join(REPO_ROOT, FRONTIER_PNG) if args.device == "cpu" else ""
    points = v3.frontier_points(store, args.seeds, timing)
    if plot:
        from ablation.frontier import plot_frontier

        labels = {c: v3.LABELS[c] for c in v3.FRONTIER_ROWS}
        if plot_frontier(points, plot, labels, v3.frontier_caption(points)):
            print(f"[ablation] wrote {plot}")
    blocks = None
    for path in args.markdown:
        image = os.path.relpath(plot, os.path.dirname(os.path.abspath(path))) if plot else ""
        blocks = v3.markdown_blocks(
            protocol,
            store,
            args.seeds,
            args.iters,
            link_root=_link_root(path),
            configs=only,
            timing=timing,
            image_link=image.replace(os.sep, "/"),
            points=points,
            timing_command=TIMING_COMMAND,
        )
        for markers, text in blocks.items():
            write_markdown(path, text, markers)
    if blocks is None:
        blocks = v3.markdown_blocks(
            protocol,
            store,
            args.seeds,
            args.iters,
            configs=only,
            timing=timing,
            image_link=plot,
            points=points,
            timing_command=TIMING_COMMAND,
        )
    print("\n\n".join(blocks.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
