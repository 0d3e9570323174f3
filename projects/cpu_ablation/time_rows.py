#!/usr/bin/env python
"""Training seconds per iteration of the v3 rows, side by side, timed in turns: the time ratios
of the equal-cost rows and the frontier's x axis (issue 29; ``ablation/v3.py``).

Each row's v3 training is built in this one process, as a v3 run builds it: its config (v2's, at
v3's rate, ``ablation/protocols.py``), the pre-trained backbone, the SA-Shapes training loader,
the SGD optimizer and the warm-up + cosine schedule over v3's length. The rows then take turns,
``--burst`` training iterations each (data loading included), on ``--threads`` torch threads
(one: as the sweep runs them), with the measurement lab's timing helper, which
``tools/benchmark.py --paired`` uses too: ``time_calls`` (the steps in turns, so that a change in
the machine's load falls on every row alike) and ``paired_ratios`` (each turn over the
baseline's beside it; the median is the estimate least moved by drift).

Writes ``RESULTS/v3_timing.json`` (the machine, the date, s/iter per row and the ratios), which
is committed: the equal-cost rows' lengths are ``round(V3_ITERS * ratio)`` from that file, so they
do not move with each measurement. Measure on a machine doing nothing else::

    python projects/cpu_ablation/time_rows.py            # about 15 minutes on 2 cores
    python projects/cpu_ablation/time_rows.py --burst 2 --turns 2 --warmup 0 --output /tmp/t.json
"""

import argparse
import datetime
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
LAB = os.path.join(os.path.dirname(HERE), "lab")
for path in (HERE, LAB):
    if path not in sys.path:
        sys.path.insert(0, path)

from ablation import v3  # noqa: E402
from ablation.protocols import DEVICES, FRONTIER_ROWS, PROTOCOLS  # noqa: E402
from ablation.store import write_json_atomic  # noqa: E402


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        nargs="+",
        default=list(FRONTIER_ROWS),
        help="configs to time (the first is the ratios' reference; default: the frontier's rows)",
    )
    parser.add_argument("--burst", type=int, default=10, help="training iterations per turn")
    parser.add_argument("--turns", type=int, default=20, help="timed turns per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed turns per row first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the sweep's: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device",
        default="cpu",
        choices=DEVICES,
        help="as run_ablation.py's: cuda times the rows on the GPU, into the cuda store",
    )
    parser.add_argument(
        "--output",
        default=None,
        help=f"the JSON to write (default: the v3 store's {v3.TIMING_FILE}, committed)",
    )
    parser.add_argument(
        "--opts", nargs="*", default=[], help="further overrides, as run_ablation.py's --opts"
    )
    return parser


def build_training(store, config, iters, seed, output_dir):
    """One row's v3 training, as ``do_train`` builds it: ``(step, model)`` where ``step()`` runs
    one training iteration (the next batch, forward, backward, SGD step, schedule step)."""
    from detectron2.config import instantiate
    from detectron2.solver import LRMultiplier
    from detectron2.utils.env import seed_all_rng

    from sa_ejhead.engine import AtomicDetectionCheckpointer, build_lazy_model, load_lazy_config
    from sa_ejhead.engine.lazy import build_lazy_train_loader
    from sa_ejhead_lab.measure import training_step

    cfg = load_lazy_config(
        store.config_file(config),
        [
            f"train.max_iter={iters}",
            f"train.seed={seed}",
            f"train.output_dir={output_dir}",
            "train.device=cpu",
        ]
        + list(store.opts),
    )
    seed_all_rng(seed)
    model = build_lazy_model(cfg)
    AtomicDetectionCheckpointer(model, output_dir).resume_or_load(
        cfg.train.init_checkpoint, resume=False
    )
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    scheduler = LRMultiplier(optimizer, instantiate(cfg.lr_multiplier), iters)
    loader, _, _ = build_lazy_train_loader(cfg, seed)
    batches = iter(loader)
    model.train()

    def step():
        training_step(model, next(batches), optimizer)()
        scheduler.step()

    return step, model


def measure_rows(store, rows, iters, burst, turns, warmup, seed, device="cpu"):
    """Time ``rows`` in turns, ``burst`` iterations a turn; per row the lab's ``time_calls``
    figures (per turn) and its ``paired_ratios`` to the first row."""
    from detectron2.utils.events import EventStorage

    from sa_ejhead_lab.measure import paired_ratios, time_calls

    steps = {}
    with tempfile.TemporaryDirectory() as tmp:
        for config in rows:
            print(f"[time_rows] building {config} ...", flush=True)
            step, _ = build_training(store, config, iters, seed, os.path.join(tmp, config))

            def run_burst(step=step):
                for _ in range(burst):
                    step()

            steps[config] = run_burst
        print(
            f"[time_rows] {len(rows)} rows in turns, {burst} iterations a turn, "
            f"{warmup} + {turns} turns each ...",
            flush=True,
        )
        with EventStorage():
            timed = time_calls(steps, runs=turns, warmup=warmup, device=device)
    base = rows[0]
    return {
        config: dict(
            timed[config], ratio=paired_ratios(timed[config]["times"], timed[base]["times"])
        )
        for config in rows
    }


def timing_record(store, timed, rows, args, iters, threads):
    """The timing file's contents: how, where and when it was measured, and per row its
    s/iter and ratio."""
    import torch

    from sa_ejhead_lab.report import describe_machine

    out_rows = {}
    for config in rows:
        t = timed[config]
        out_rows[config] = {
            "config_hash": store.hash(config),
            "sec_per_iter": t["median"] / args.burst,
            "min_sec_per_iter": t["min"] / args.burst,
            "cpu_sec_per_iter": t["cpu_median"] / args.burst,
            "turns_s": t["times"],
            "ratio": {k: t["ratio"][k] for k in ("median", "min", "max")},
        }
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "what": "training seconds per iteration of the v3 rows, timed in turns "
        "(projects/cpu_ablation/time_rows.py)",
        "command": "python projects/cpu_ablation/time_rows.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": describe_machine(threads),
        "logical_cpus": os.cpu_count(),
        "cores_available": cores,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "protocol": "v3",
        "opts": list(store.opts),
        "schedule_iters": iters,
        "threads": threads,
        "burst": args.burst,
        "turns": args.turns,
        "warmup": args.warmup,
        "baseline": rows[0],
        "rows": out_rows,
        "ratios": {config: out_rows[config]["ratio"]["median"] for config in rows},
    }


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.burst < 1 or args.turns < 1 or args.warmup < 0 or args.threads < 1:
        raise SystemExit("--burst, --turns and --threads must be >= 1, --warmup >= 0")
    if args.rows[0] != "baseline":
        raise SystemExit("the first row is the ratios' reference: it must be the baseline")
    protocol = PROTOCOLS["v3"]
    store = protocol.store(args.opts, args.device)
    for config in args.rows:
        if not store.has_config(config):
            raise SystemExit(f"Unknown config {config!r}: no {config}.py in {store.config_dir}")
    import torch

    torch.set_num_threads(args.threads)
    timed = measure_rows(
        store,
        args.rows,
        protocol.iters,
        args.burst,
        args.turns,
        args.warmup,
        args.seed,
        args.device,
    )
    record = timing_record(store, timed, args.rows, args, protocol.iters, args.threads)
    output = args.output or os.path.join(store.results_dir, v3.TIMING_FILE)
    write_json_atomic(output, record)
    print(record["machine"])
    for config, row in record["rows"].items():
        r = row["ratio"]
        print(
            f"{config:28s} {row['sec_per_iter']:.3f} s/iter  ratio {r['median']:.3f} "
            f"({r['min']:.3f}-{r['max']:.3f})"
        )
    print(f"[time_rows] wrote {output}; equal-cost lengths: {v3.equal_cost_iters(record)}")
    return 0


if __name__ == "__main__":
    # one thread per run, as the sweep sets it (before torch starts its pools)
    threads = "1"
    if "--threads" in sys.argv[1:-1]:
        threads = sys.argv[sys.argv.index("--threads") + 1]
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    os.environ.setdefault("MKL_NUM_THREADS", threads)
    sys.exit(main())
