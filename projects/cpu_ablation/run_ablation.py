#!/usr/bin/env python
"""CPU ablation: the embedded-data analogue of every row of the paper's Tables 2-5.

Trains each row's demo-sized config (``projects/cpu_ablation/configs/``) on ``sa_shapes_train``
for ``--iters`` iterations with each of ``--seeds``, evaluates on ``sa_shapes_val`` (COCO box and
mask AP, AP_S/M/L) and writes the tables of mean ± std over the seeds, laid out like the paper's.

Every run lives in ``OUTPUT/<config>/<hash>/<seed>/<iters>/``, ``<hash>`` being a short hash of
the resolved config and ``--opts`` (so a run made with an older version of a config, e.g. before
the demo config changed, is never reused); its ``results.json`` is written atomically at the end
and copied (atomically too) to the committed results store ``RESULTS/<config>/<hash>/<seed>/
<iters>.json`` (default ``projects/cpu_ablation/results``), so finished runs survive a fresh clone
and the tables can be rebuilt without the checkpoints. A rerun skips finished runs (found in either
place); ``--resume`` continues unfinished ones from their last checkpoint (without it they
restart); ``--table-only`` builds the tables from whatever finished. ``--jobs N`` runs N trainings
at once, each on ``cpu_count // N`` torch threads (on 2 cores, 2 single-thread jobs train ~1.5x
more iterations per second than one 2-thread job).

Examples::

    python projects/cpu_ablation/run_ablation.py --tables 2 --seeds 0 1 2 --iters 300
    python projects/cpu_ablation/run_ablation.py --tables 2 3 4 5 E --jobs 2 --resume  # continue
    python projects/cpu_ablation/run_ablation.py --table-only --markdown README.md docs/ablation.md
"""

import argparse
import concurrent.futures
import functools
import hashlib
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG_DIR = os.path.join(HERE, "configs")
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_OUTPUT = "output/cpu_ablation"
DEFAULT_RESULTS = os.path.join(HERE, "results")
# --markdown writes the tables between these markers when the file has them (README.md does)
TABLES_START = "<!-- cpu-ablation-tables:start -->"
TABLES_END = "<!-- cpu-ablation-tables:end -->"
DEFAULT_ITERS = 615  # the make-demo length (configs/demo/sa_shapes.py, docs/demo.md)
METRICS = ("AP", "APs", "APm", "APl")

# table -> (title, columns before the AP figures, rows as (config, cells))
TABLES = {
    "2": (
        "Table 2. Effects of each component (embedded SA-Shapes val)",
        ["Model", "Backbone"],
        [
            ("baseline", ["Mask R-CNN (Baseline)", "ResNet18-FPN"]),
            ("safpn", ["Mask R-CNN + SA-FPN", "ResNet18-FPN"]),
            ("ejhead", ["Mask R-CNN + EJ-Head", "ResNet18-FPN"]),
            ("safpn_ejhead", ["Mask R-CNN + SA-FPN + EJ-Head (Ours)", "ResNet18-FPN"]),
            ("r34_baseline", ["Mask R-CNN", "ResNet34-FPN"]),
            ("r34_safpn_ejhead", ["Mask R-CNN + SA-FPN + EJ-Head (Ours)", "ResNet34-FPN"]),
            ("cascade_baseline", ["Cascade Mask R-CNN", "ResNet18-FPN"]),
            ("cascade_safpn_ejhead", ["Cascade Mask R-CNN + SA-FPN + EJ-Head", "ResNet18-FPN"]),
        ],
    ),
    "3": (
        "Table 3. FPN designs",
        ["FPN design"],
        [
            ("baseline", ["TD-FPN"]),
            ("fpn_bu", ["BU-FPN"]),
            ("fpn_buf", ["BUF-FPN"]),
            ("fpn_td_add_buf", ["TD-FPN add BUF-FPN"]),
            ("safpn", ["SA-FPN (TD-FPN concat BUF-FPN)"]),
        ],
    ),
    "4": (
        "Table 4. EJ-Head components",
        ["Method", "Interleaving", "Enriched Feature", "Boundary Refinement"],
        [
            ("baseline", ["Mask R-CNN (Baseline)", "", "", ""]),
            ("ej_interleave", ["Mask R-CNN", "✓", "", ""]),
            ("ej_enriched", ["Mask R-CNN", "", "✓", ""]),
            ("ej_refine", ["Mask R-CNN", "", "", "✓"]),
            ("ej_interleave_enriched", ["Mask R-CNN", "✓", "✓", ""]),
            ("ejhead", ["Mask R-CNN + EJ-Head", "✓", "✓", "✓"]),
        ],
    ),
    "5": (
        "Table 5. Boundary Refinement designs",
        ["Boundary Refinement (BR)"],
        [
            ("baseline", ["None"]),
            ("ej_br_conv1", ["Simple Conv x 1"]),
            ("ej_br_conv2", ["Simple Conv x 2"]),
            ("ej_br_conv3", ["Simple Conv x 3"]),
            ("ej_refine", ["Simple Conv x 2 + Shortcut (BR)"]),
        ],
    ),
    "E": (
        "Efficient vs faithful SA-FPN + EJ-Head (not in the paper)",
        ["Setting"],
        [
            ("baseline", ["Mask R-CNN (Baseline)"]),
            ("safpn_ejhead", ["SA-FPN + EJ-Head, faithful"]),
            ("safpn_ejhead_efficient", ["SA-FPN + EJ-Head, efficient"]),
        ],
    ),
}


def _plain(obj):
    """JSON stand-in for the objects a LazyConfig holds (callables by name, others by repr)."""
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"
    return repr(obj)


@functools.lru_cache(maxsize=None)
def config_hash(config, opts=()):
    """Short hash of a row's resolved config with the ``--opts`` overrides applied.

    Args:
        config (str): config name (``configs/<config>.py``).
        opts (tuple[str]): the sweep's ``KEY=VALUE`` overrides.

    Returns:
        str: 10 hex digits; changes whenever any value of the loaded config (including what it
        inherits from ``configs/demo/*.py``) or the overrides change.
    """
    from omegaconf import OmegaConf

    from sa_ejhead.engine import load_lazy_config

    cfg = load_lazy_config(os.path.join(CONFIG_DIR, f"{config}.py"), list(opts))
    data = OmegaConf.to_container(cfg, resolve=True)
    text = json.dumps(data, sort_keys=True, default=_plain)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def run_dir(output_dir, config, seed, iters, opts=()):
    """Directory of one run: ``OUTPUT/<config>/<hash>/<seed>/<iters>`` (see :func:`config_hash`)."""
    return os.path.join(output_dir, config, config_hash(config, tuple(opts)), str(seed), str(iters))


def write_json_atomic(path, data):
    """Write ``data`` as JSON to ``path`` atomically (the engine's temporary file + rename)."""
    from sa_ejhead.engine.checkpoint import atomic_write

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, functools.partial(json.dump, data, indent=1), binary=False)


def seconds_per_iteration(directory):
    """Median training time per iteration of a run, from Detectron2's ``metrics.json``, or None.

    ``time`` in ``metrics.json`` is Detectron2's per-iteration wall time (data included), written
    every ``log_period`` iterations; the median ignores the slow first iterations.
    """
    times = []
    try:
        with open(os.path.join(directory, "metrics.json")) as f:
            for line in f:
                try:
                    t = json.loads(line).get("time")
                except (ValueError, AttributeError):
                    continue
                if isinstance(t, (int, float)) and math.isfinite(t):
                    times.append(float(t))
    except OSError:
        return None
    if not times:
        return None
    times.sort()
    mid = len(times) // 2
    return times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2


def result_path(results_dir, config, seed, iters, opts=()):
    """Path of a run's copy in the results store: ``RESULTS/<config>/<hash>/<seed>/<iters>.json``."""
    return os.path.join(
        results_dir, config, config_hash(config, tuple(opts)), str(seed), f"{iters}.json"
    )


def _read_json(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_result(output_dir, config, seed, iters, opts=(), results_dir=None):
    """The finished result of a run, or None (missing or unreadable everywhere).

    Looks in the results store ``results_dir`` first (when given), then in the run directory's
    ``results.json``.
    """
    if results_dir:
        data = _read_json(result_path(results_dir, config, seed, iters, opts))
        if data is not None:
            return data
    return _read_json(os.path.join(run_dir(output_dir, config, seed, iters, opts), "results.json"))


def publish_results(output_dir, results_dir, configs, seeds, iters, opts=()):
    """Copy finished runs' ``results.json`` that the store lacks into the store; return how many."""
    copied = 0
    for config in configs:
        for seed in seeds:
            if _read_json(result_path(results_dir, config, seed, iters, opts)) is not None:
                continue
            data = _read_json(
                os.path.join(run_dir(output_dir, config, seed, iters, opts), "results.json")
            )
            if data is not None:
                write_json_atomic(result_path(results_dir, config, seed, iters, opts), data)
                copied += 1
    return copied


def configs_of(tables):
    """Unique configs of the given tables, in table order."""
    seen = []
    for t in tables:
        for config, _ in TABLES[t][2]:
            if config not in seen:
                seen.append(config)
    return seen


def plan_runs(output_dir, configs, seeds, iters, opts=(), results_dir=None):
    """Runs to do, seed-major (every config once per seed first), without the finished ones.

    Args:
        output_dir (str): the cache root.
        configs (list[str]): config names.
        seeds (list[int]): seeds.
        iters (int): iterations per run.
        opts (list[str]): the sweep's overrides (part of the cache key).
        results_dir (str or None): the results store, also searched for finished runs.

    Returns:
        list[tuple[str, int]]: (config, seed) pairs still to run.
    """
    return [
        (c, s)
        for s in seeds
        for c in configs
        if load_result(output_dir, c, s, iters, opts, results_dir) is None
    ]


def mean_std(values):
    """Mean and sample standard deviation (0 for one value) of finite values; (nan, nan) if none."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def summarize(output_dir, config, seeds, iters, opts=(), results_dir=None):
    """Mean ± std over the finished seeds of a config.

    Returns:
        dict: ``n`` (finished seeds), ``sec_per_iter`` and, for ``bbox``/``segm`` x
        ``AP``/``APs``/``APm``/``APl``, ``(mean, std)``.
    """
    results = [load_result(output_dir, config, s, iters, opts, results_dir) for s in seeds]
    results = [r for r in results if r is not None]
    out = {"n": len(results)}
    out["sec_per_iter"] = mean_std([r.get("sec_per_iter") for r in results])
    for task in ("bbox", "segm"):
        for m in METRICS:
            out[(task, m)] = mean_std([r.get(task, {}).get(m) for r in results])
    return out


def _cell(mean_std_pair, n):
    """``mean ± std`` over ``n`` seeds; the mean alone for one seed, ``-`` for none."""
    mean, std = mean_std_pair
    if math.isnan(mean):
        return "-"
    return f"{mean:.1f}" if n == 1 else f"{mean:.1f} ± {std:.1f}"


def format_table(table, output_dir, seeds, iters, opts=(), results_dir=None, link_root=""):
    """Markdown table of one of the paper's tables from the finished runs.

    Args:
        table (str): "2", "3", "4", "5" or "E".
        output_dir (str): the cache root.
        seeds (list[int]): seeds to average.
        iters (int): iterations per run.
        opts (list[str]): the sweep's overrides (part of the cache key).
        results_dir (str or None): the results store, searched first.
        link_root (str): path from the Markdown file to the repository root ("" or "../").

    Returns:
        str: a title line and the table: the paper's leading columns, then box AP, AP_S, AP_M,
        AP_L, mask AP, AP_S, AP_M, AP_L (mean ± std over seeds, COCO AP in %), the training
        seconds per iteration (mean over seeds of each run's median, see
        :func:`seconds_per_iteration`) and the number of finished seeds.
    """
    title, lead, rows = TABLES[table]
    header = lead + ["box AP", "AP_S", "AP_M", "AP_L", "mask AP", "AP_S", "AP_M", "AP_L"]
    header += ["s/iter", "seeds", "config"]
    lines = [
        f"**{title}** ({iters} iterations, mean ± std over seeds)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(lead) + "---:|" * 10 + "---|",
    ]
    for config, cells in rows:
        s = summarize(output_dir, config, seeds, iters, opts, results_dir)
        figures = [_cell(s[(task, m)], s["n"]) for task in ("bbox", "segm") for m in METRICS]
        spi = s["sec_per_iter"][0]
        figures.append("-" if math.isnan(spi) else f"{spi:.2f}")
        link = f"[{config}]({link_root}projects/cpu_ablation/configs/{config}.py)"
        lines.append("| " + " | ".join(cells + figures + [f"{s['n']}/{len(seeds)}", link]) + " |")
    return "\n".join(lines)


def format_tables(tables, output_dir, seeds, iters, opts=(), results_dir=None, link_root=""):
    """All requested tables, separated by blank lines, after a line counting the finished runs."""
    configs = configs_of(tables)
    done = sum(
        load_result(output_dir, c, s, iters, opts, results_dir) is not None
        for c in configs
        for s in seeds
    )
    head = (
        f"_{done} of {len(configs) * len(seeds)} runs finished ({len(configs)} configs x "
        f"{len(seeds)} seeds, {iters} iterations each)._"
    )
    body = [format_table(t, output_dir, seeds, iters, opts, results_dir, link_root) for t in tables]
    return "\n\n".join([head] + body)


def write_markdown(path, text):
    """Write the tables to ``path`` (atomically): between :data:`TABLES_START` and
    :data:`TABLES_END` when the file has both markers (the rest of the file is kept), else as the
    whole file."""
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = None
    start = old.find(TABLES_START) if old is not None else -1
    end = old.find(TABLES_END, start) if start >= 0 else -1
    if end >= 0:
        new = old[: start + len(TABLES_START)] + "\n" + text + "\n" + old[end:]
    else:
        new = text + "\n"
    from sa_ejhead.engine.checkpoint import atomic_write

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: f.write(new), binary=False)


def run_one(
    config, seed, iters, output_dir, resume, checkpoint_period, opts=(), results_dir=None, threads=0
):
    """Train and evaluate one config/seed in this process; write ``results.json`` atomically.

    The result also goes to the results store ``results_dir`` when given; ``threads`` > 0 sets
    the number of torch threads.
    """
    import torch

    if threads > 0:
        torch.set_num_threads(threads)

    from detectron2.utils.logger import setup_logger

    from sa_ejhead.engine import do_train, load_lazy_config

    directory = run_dir(output_dir, config, seed, iters, opts)
    os.makedirs(directory, exist_ok=True)
    setup_logger(directory, name="detectron2")
    cfg = load_lazy_config(
        os.path.join(CONFIG_DIR, f"{config}.py"),
        [
            f"train.max_iter={iters}",
            f"train.seed={seed}",
            f"train.output_dir={directory}",
            "train.eval_period=0",
            "train.device=cpu",
            f"train.checkpointer.period={checkpoint_period}",
        ]
        + list(opts),
    )
    # whether this process continues an interrupted run (a checkpoint was left by an earlier one)
    resumed = bool(resume) and os.path.isfile(os.path.join(directory, "last_checkpoint"))
    start = time.time()
    results = do_train(cfg, resume=resume)
    if not results:
        raise RuntimeError(f"{config} seed {seed}: training finished without evaluation results")
    data = {
        "config": config,
        "seed": seed,
        "iters": iters,
        "wall_s": time.time() - start,
        "resumed": resumed,
        "torch_threads": torch.get_num_threads(),
        "sec_per_iter": seconds_per_iteration(directory),
        "opts": list(opts),
        "config_hash": config_hash(config, tuple(opts)),
        "bbox": dict(results.get("bbox", {})),
        "segm": dict(results.get("segm", {})),
    }
    write_json_atomic(os.path.join(directory, "results.json"), data)
    if results_dir:
        write_json_atomic(result_path(results_dir, config, seed, iters, opts), data)


def get_parser():
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tables",
        nargs="+",
        default=["2", "3", "4", "5", "E"],
        choices=sorted(TABLES),
        help="which tables (E: efficient vs faithful)",
    )
    parser.add_argument(
        "--configs",
        nargs="*",
        default=None,
        help="only these configs (default: every row of --tables)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--iters", type=int, default=DEFAULT_ITERS, help="training iterations per run"
    )
    parser.add_argument(
        "--output-dir", default=DEFAULT_OUTPUT, help="run directories (logs, checkpoints)"
    )
    parser.add_argument(
        "--results-dir",
        default=DEFAULT_RESULTS,
        help="store of finished runs' results (committed); '' to use only --output-dir",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="trainings at once (each on cpu_count // jobs threads)"
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
        help="also write the tables to these files (between the "
        f"'{TABLES_START}' / '{TABLES_END}' markers when a file has them)",
    )
    parser.add_argument("--checkpoint-period", type=int, default=100)
    parser.add_argument(
        "--opts",
        nargs="*",
        default=[],
        help="config overrides KEY=VALUE for every run (e.g. optimizer.lr=0.01)",
    )
    parser.add_argument("--run-one", nargs=2, metavar=("CONFIG", "SEED"), help=argparse.SUPPRESS)
    return parser


def _run_subprocess(args, config, seed, threads):
    """Train one config/seed in a subprocess (output appended to the run's ``stdout.txt``)."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--run-one",
        config,
        str(seed),
        "--iters",
        str(args.iters),
        "--output-dir",
        args.output_dir,
        "--results-dir",
        args.results_dir,
        "--checkpoint-period",
        str(args.checkpoint_period),
        "--threads",
        str(threads),
    ]
    if args.resume:
        cmd.append("--resume")
    if args.opts:
        cmd += ["--opts"] + list(args.opts)
    log = os.path.join(run_dir(args.output_dir, config, seed, args.iters, args.opts), "stdout.txt")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log, "a") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    return rc, log


def run_sweep(args, todo):
    """Run the (config, seed) pairs of ``todo``, ``args.jobs`` at a time, in plan order."""
    jobs = max(1, args.jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    print(
        f"[ablation] {len(todo)} runs to do ({args.iters} iterations each, {jobs} at once, "
        f"{threads} torch thread(s) each)",
        flush=True,
    )
    done = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {}
        for config, seed in todo:
            future = pool.submit(_run_subprocess, args, config, seed, threads)
            futures[future] = (config, seed, time.time())
        for future in concurrent.futures.as_completed(futures):
            config, seed, _ = futures[future]
            rc, log = future.result()
            done += 1
            status = "done" if rc == 0 else f"FAILED (rc={rc}, see {log})"
            print(f"[ablation] {done}/{len(todo)} {config} seed {seed}: {status}", flush=True)


def main(argv=None):
    """Run the missing runs (each in a subprocess), then print (and write) the tables."""
    args = get_parser().parse_args(argv)
    if args.run_one:
        run_one(
            args.run_one[0],
            int(args.run_one[1]),
            args.iters,
            args.output_dir,
            args.resume,
            args.checkpoint_period,
            args.opts,
            args.results_dir,
            args.threads,
        )
        return 0
    configs = args.configs or configs_of(args.tables)
    for c in configs:
        if not os.path.isfile(os.path.join(CONFIG_DIR, f"{c}.py")):
            raise SystemExit(f"Unknown config {c!r}: no {c}.py in {CONFIG_DIR}")
    if args.results_dir:
        copied = publish_results(
            args.output_dir, args.results_dir, configs, args.seeds, args.iters, args.opts
        )
        if copied:
            print(f"[ablation] copied {copied} finished result(s) to {args.results_dir}")
    if not args.table_only:
        todo = plan_runs(
            args.output_dir, configs, args.seeds, args.iters, args.opts, args.results_dir
        )
        run_sweep(args, todo)
    args_of_tables = (args.tables, args.output_dir, args.seeds, args.iters, args.opts)
    text = format_tables(
        args.tables, args.output_dir, args.seeds, args.iters, args.opts, args.results_dir
    )
    print(text)
    for path in args.markdown:
        # the config links are relative to the Markdown file
        link_root = os.path.relpath(REPO_ROOT, os.path.dirname(os.path.abspath(path)))
        link_root = "" if link_root == "." else link_root.replace(os.sep, "/") + "/"
        write_markdown(path, format_tables(*args_of_tables, args.results_dir, link_root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
