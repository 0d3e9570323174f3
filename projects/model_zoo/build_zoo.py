#!/usr/bin/env python3
"""Build sa-ejhead's model zoo: train the SA-Shapes demo models, ship their weights, write the table.

    python projects/model_zoo/build_zoo.py                  # everything (make zoo); resumable
    python projects/model_zoo/build_zoo.py --only sa_shapes_baseline
    python projects/model_zoo/build_zoo.py --table-only     # docs/model_zoo.md from the manifest

For each entry of :data:`ENTRIES`:

1. **train** the config with its full schedule through ``sa_ejhead.engine.do_train`` in
   ``output/zoo/<name>/`` (a checkpoint every 200 iterations, written atomically; rerunning the
   command continues an interrupted run exactly, and skips a finished one);
2. **pack** ``model_final.pth`` at each precision of :data:`sa_ejhead.model_zoo.PRECISIONS`,
   xz-compressed, and evaluate each packed file on the config's test set through the same loader
   users get (``sa_ejhead://model_zoo/...``); ship the smallest file whose COCO box and mask AP
   stay within 0.1 of the full-precision model's, and that fits in 10 MB (evaluations are cached
   by the evaluated file's sha256);
3. **time** inference per image of the shipped file on the test set (the median of the
   per-image times; measured anew on every run);
4. record file, sha256, size, precision, metrics, training time and machine in
   ``sa_ejhead/model_zoo_weights/manifest.json`` and rewrite ``docs/model_zoo.md`` from it.

The training time is the wall time of the sessions that trained the kept iterations, summed in
``output/zoo/<name>/train_record.json``; a ``"note"`` written there (e.g. that other jobs shared
the machine) is shown with the table.
"""

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
OUTPUT = os.path.join(REPO, "output", "zoo")
DOC = os.path.join(REPO, "docs", "model_zoo.md")
COMMAND = "make zoo"

# name -> config (relative to configs/); the name is the shipped file's stem
ENTRIES = {
    "sa_shapes_safpn_ejhead": "demo/sa_shapes.py",
    "sa_shapes_baseline": "demo/sa_shapes_baseline.py",
}
CHECKPOINT_PERIOD = 200


def _output_dir(name):
    return os.path.join(OUTPUT, name)


def _read_json(path, default=None):
    if not os.path.isfile(path):
        return default
    with open(path) as f:
        return json.load(f)


def _write_json(path, data):
    from sa_ejhead.engine import atomic_write

    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda f: f.write(text), binary=False)


def _machine():
    """The CPU model and core count (``/proc/cpuinfo``), e.g. 'AMD EPYC 7B13, 2 cores'."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def _load_cfg(config, output_dir, opts=()):
    from sa_ejhead.engine import load_lazy_config
    from sa_ejhead.model_zoo import get_config_file

    cfg = load_lazy_config(
        get_config_file(config),
        [
            f"train.output_dir={output_dir}",
            f"train.checkpointer.period={CHECKPOINT_PERIOD}",
            "train.checkpointer.max_to_keep=2",
        ]
        + list(opts),
    )
    return cfg


def train(name, config):
    """Train ``config`` in ``output/zoo/<name>/`` (resuming an interrupted run); return the
    training record: iterations, seconds (summed over the sessions that trained it), threads,
    machine, and the full-precision model's COCO results."""
    import torch
    from detectron2.utils.logger import setup_logger

    from sa_ejhead.data import prepare_sa_shapes
    from sa_ejhead.engine import do_train

    out = _output_dir(name)
    record_file = os.path.join(out, "train_record.json")
    record = _read_json(record_file, {})
    if record.get("done"):
        print(f"[zoo] {name}: trained ({record['iterations']} iterations), skipped")
        return record
    os.makedirs(out, exist_ok=True)
    setup_logger(out, name="detectron2", abbrev_name="d2")
    setup_logger(out, name="sa_ejhead")
    prepare_sa_shapes()
    cfg = _load_cfg(config, out)
    threads = torch.get_num_threads()
    start = time.perf_counter()
    try:
        results = do_train(cfg, resume=True)
    finally:
        # the seconds of this session count even if it is interrupted
        record["seconds"] = record.get("seconds", 0.0) + time.perf_counter() - start
        record["sessions"] = record.get("sessions", 0) + 1
        record["threads"] = sorted(set(record.get("threads", [])) | {threads})
        _write_json(record_file, record)
    record.update(
        done=True,
        config=config,
        iterations=int(cfg.train.max_iter),
        machine=_machine(),
        results_fp32=results,
    )
    _write_json(record_file, record)
    return record


# The COCO metrics of the table; a packed file must keep box and mask AP within AP_TOLERANCE of
# the full-precision model's.
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
AP_TOLERANCE = 0.1
MAX_BYTES = 10 * 10**6  # 10 MB: the repository's limit per weights file


def evaluate(cfg, checkpoint):
    """COCO results of ``checkpoint`` (a plain checkpoint file) on ``cfg``'s test set, cached in
    ``<checkpoint>.eval.json`` by the file's sha256."""
    from sa_ejhead.engine import build_cpu_model, do_test
    from sa_ejhead.pretrained import sha256_of

    cache = checkpoint + ".eval.json"
    digest = sha256_of(checkpoint)
    cached = _read_json(cache, {})
    if cached.get("sha256") == digest:
        return cached["results"]
    model, missing = build_cpu_model(cfg, checkpoint)
    assert not [k for k in missing if not k.endswith("num_batches_tracked")], missing
    results = do_test(cfg, model)
    _write_json(cache, {"sha256": digest, "results": results})
    return results


def time_inference(cfg, checkpoint):
    """The median seconds of one eager call per image of ``cfg``'s test set (each image timed
    alone, after 2 warm-up calls), with the project's timing helper."""
    import statistics

    import torch
    from detectron2.config import instantiate

    sys.path.insert(0, os.path.join(REPO, "projects", "lab"))  # the measurement lab
    from sa_ejhead_lab.measure import time_calls
    from sa_ejhead.engine import build_cpu_model

    model, _ = build_cpu_model(cfg, checkpoint)
    inputs = [batch[0] for batch in instantiate(cfg.dataloader.test)]
    with torch.no_grad():
        for x in inputs[:2]:
            model([x])
        times = time_calls(
            {i: (lambda x=x: model([x])) for i, x in enumerate(inputs)}, runs=1, warmup=0
        )
    return statistics.median(t["median"] for t in times.values())


def _ap_differences(results, reference):
    """The largest difference of box and mask AP, and of any of AP_KEYS."""
    diff = {(t, k): abs(results[t][k] - reference[t][k]) for t in ("bbox", "segm") for k in AP_KEYS}
    return max(diff["bbox", "AP"], diff["segm", "AP"]), max(diff.values())


def pack(name, config, record):
    """Pack ``model_final.pth`` at each precision, smallest first, and ship the first whose box
    and mask AP stay within AP_TOLERANCE of the full-precision model's and that fits in
    MAX_BYTES; return the manifest entry."""
    import torch

    sys.path.insert(0, os.path.join(REPO, "projects", "pretrain_backbone"))  # its weights.py
    from sa_ejhead.pretrained import MODEL_ZOO_DIR, PRECISIONS, sha256_of, unpack_file
    from weights import export_submodule_weights

    out = _output_dir(name)
    final = os.path.join(out, "model_final.pth")
    cfg = _load_cfg(config, out)
    cfg.train.device = "cpu"
    reference = evaluate(cfg, final)
    print(
        f"[zoo] {name} fp32: box AP {reference['bbox']['AP']:.2f}, "
        f"mask AP {reference['segm']['AP']:.2f}"
    )
    candidates = {}
    chosen = None
    for precision in reversed(PRECISIONS):  # smallest first
        path = os.path.join(out, f"{name}.{precision}.pth.xz")
        export_submodule_weights(final, path, prefix="", precision=precision)
        size = os.path.getsize(path)
        # what sa_ejhead://model_zoo/ hands to the checkpointer
        results = evaluate(cfg, unpack_file(path, path[: -len(".xz")]))
        ap_diff, any_diff = _ap_differences(results, reference)
        candidates[precision] = {
            "bytes": size,
            "ap_difference": round(ap_diff, 4),
            "max_difference": round(any_diff, 3),
        }
        print(
            f"[zoo] {name} {precision}: {size / 1e6:.2f} MB, box/mask AP difference "
            f"{ap_diff:.3f} (any metric: {any_diff:.3f})"
        )
        if ap_diff <= AP_TOLERANCE and size <= MAX_BYTES:
            chosen = (precision, path, results)
            break
    if chosen is None:
        raise SystemExit(f"[zoo] {name}: no precision keeps the AP within {AP_TOLERANCE} in 10 MB")
    precision, path, results = chosen
    seconds = time_inference(cfg, path[: -len(".xz")])
    os.makedirs(MODEL_ZOO_DIR, exist_ok=True)
    shipped = os.path.join(MODEL_ZOO_DIR, f"{name}.pth.xz")
    with open(path, "rb") as f:
        data = f.read()
    from sa_ejhead.engine import atomic_write

    atomic_write(shipped, lambda f: f.write(data))

    def rounded(res):
        return {t: {k: round(res[t][k], 3) for k in AP_KEYS} for t in ("bbox", "segm")}

    return {
        "file": os.path.basename(shipped),
        "sha256": sha256_of(shipped),
        "bytes": os.path.getsize(shipped),
        "precision": precision,
        "candidates": candidates,
        "dataset": "sa_shapes_val",
        "metrics": rounded(results),
        "metrics_fp32": rounded(reference),
        "iterations": record["iterations"],
        "train_seconds": round(record["seconds"], 1),
        "train_sessions": record["sessions"],
        "train_threads": record["threads"],
        "train_note": record.get("note", ""),
        "inference_s_per_image": round(seconds, 4),
        "inference_threads": torch.get_num_threads(),
        "machine": record["machine"],
        "command": COMMAND,
    }


def _minutes(seconds):
    return f"{int(seconds // 60)} min {int(round(seconds % 60))} s"


def format_table(manifest):
    """``docs/model_zoo.md`` from the manifest."""
    from sa_ejhead.model_zoo import LAZY_CONFIGS, OTHER_CONFIGS
    from sa_ejhead.pretrained import PRECISIONS

    lines = [
        "# Model zoo",
        "",
        "<!-- written by `make zoo` (projects/model_zoo/build_zoo.py) from "
        "sa_ejhead/model_zoo_weights/manifest.json; do not edit by hand -->",
        "",
        "Trained weights ship inside the package and load in one call, as Detectron2's model zoo:",
        "",
        "```python",
        "from sa_ejhead import model_zoo",
        "",
        'model = model_zoo.get("demo/sa_shapes.py", trained=True)  # built, trained weights loaded',
        'url = model_zoo.get_checkpoint_url("demo/sa_shapes.py")  # sa_ejhead://model_zoo/...',
        "```",
        "",
        "The URL works wherever Detectron2 takes weights (`train.init_checkpoint=URL`, "
        "`MODEL.WEIGHTS URL`), and `tools/demo.py` uses it when a zoo config is given no weights:",
        "",
        "```bash",
        ".venv/bin/python tools/demo.py --config-file configs/demo/sa_shapes.py \\",
        "    --input docs/images/sa_shapes_val_000007.png --output vis/",
        "```",
        "",
        "## SA-Shapes checkpoints",
        "",
        "COCO AP (%) on `sa_shapes_val` (80 images) of the shipped file, as "
        "`tests/test_model_zoo_trained.py` checks it (to 0.1):",
        "",
        "| config | model | box AP | APs | APm | APl | mask AP | APs | APm | APl |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    titles = {
        "demo/sa_shapes.py": "SA-FPN + EJ-Head (faithful)",
        "demo/sa_shapes_baseline.py": "Mask R-CNN baseline",
    }
    for config, e in manifest.items():
        b, m = e["metrics"]["bbox"], e["metrics"]["segm"]
        lines.append(
            f"| [{config}](../configs/{config}) | {titles.get(config, '')} | "
            + " | ".join(f"{b[k]:.1f}" for k in ("AP", "APs", "APm", "APl"))
            + " | "
            + " | ".join(f"{m[k]:.1f}" for k in ("AP", "APs", "APm", "APl"))
            + " |"
        )
    lines += [
        "",
        "| config | training (PyTorch threads) | inference per image (threads) | file | precision "
        "| size | sha256 |",
        "|---|---|---:|---|---|---:|---|",
    ]
    for config, e in manifest.items():
        lines.append(
            f"| {config} | {e['iterations']} iterations, {_minutes(e['train_seconds'])} "
            f"({', '.join(map(str, e['train_threads']))}) | "
            f"{e['inference_s_per_image'] * 1000:.0f} ms ({e['inference_threads']}) | "
            f"`sa_ejhead://model_zoo/{e['file']}` | {e['precision']} | "
            f"{e['bytes'] / 1e6:.1f} MB | `{e['sha256'][:16]}...` |"
        )
    notes = [f"`{c}`: {e['train_note']}" for c, e in manifest.items() if e.get("train_note")]
    if notes:
        lines += ["", "Training conditions: " + "; ".join(notes) + "."]
    machines = sorted({e["machine"] for e in manifest.values()})
    lines += [
        "",
        f"Machine: {'; '.join(machines)} (this project's CPU), PyTorch's threads as given. "
        "Training time is the wall time of the training loop and its final evaluation; "
        "inference is the median over the 80 validation images of one eager call each "
        "(192x256 images, at the test size of the config), after two warm-up calls. Hashes "
        "in full: `sa_ejhead/model_zoo_weights/manifest.json`.",
        "",
        "### Precision",
        "",
        "Each model is packed at every precision of `sa_ejhead.pretrained.PRECISIONS`, "
        "xz-compressed, smallest first, and evaluated through the same unpacking that "
        "`sa_ejhead://model_zoo/` applies; the first whose box and mask AP stay within 0.1 of "
        "the full-precision model's, and which fits in 10 MB, ships. Each candidate's size, "
        "the larger of its box and mask AP differences, and the largest difference of any "
        "metric of the table (AP50, AP75 and AP_S/M/L move more: with 80 images, the order of "
        "two near-equal scores can change a small-object AP by several tenths):",
        "",
        "| config | " + " | ".join(reversed(PRECISIONS)) + " |",
        "|---|" + "---|" * len(PRECISIONS),
    ]
    for config, e in manifest.items():
        cells = []
        for p in reversed(PRECISIONS):
            c = e["candidates"].get(p)
            if not c:
                cells.append("not tried")
                continue
            verdict = (
                "**shipped**"
                if p == e["precision"]
                else "over 10 MB" if c["bytes"] > MAX_BYTES else "AP moves more than 0.1"
            )
            cells.append(
                f"{c['bytes'] / 1e6:.2f} MB, {c['ap_difference']:.3f} ({c['max_difference']:.2f}): "
                + verdict
            )
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "`int8` keeps the weights of the convolutions and linear layers as 8-bit integers with "
        "one scale per output channel and the other tensors in half precision, `int8-fc` only "
        "those of the linear layers; `fp16` is every tensor in half precision. `sa_ejhead://model_zoo/` unpacks a file once into "
        "`$SA_EJHEAD_CACHE` (int8 weights back to float32), and loading casts every tensor to "
        "the model's dtype.",
        "",
        "## Reproduce",
        "",
        "```bash",
        "make zoo   # trains both configs (resumable: rerun to continue), packs, evaluates, and",
        "           # rewrites the weights, manifest.json and this page",
        "```",
        "",
        "The training runs in `output/zoo/<name>/` with the configs' own schedule and seed "
        "(1200 iterations, seed 0); a checkpoint every 200 iterations lets an interrupted run "
        "continue exactly.",
        "",
        "## COCO configs",
        "",
        "No COCO weights are provided for any config of the paper's tables "
        "([configs.md](configs.md)): training one takes a COCO copy and 8 GPUs for about a day, "
        "and this project is built on a 2-core CPU without either. `model_zoo.get(config, "
        "trained=True)` on such a config raises one line that lists the configs that have "
        "weights. `trained=False` builds the model with its ImageNet backbone "
        "(`detectron2://ImageNetPretrained/...`, downloaded by Detectron2).",
        "",
        "| config | trained weights |",
        "|---|---|",
    ]
    for config in LAZY_CONFIGS + OTHER_CONFIGS:
        lines.append(f"| [{config}](../configs/{config}) | not provided (needs COCO + GPUs) |")
    return "\n".join(lines) + "\n"


def write_outputs(manifest):
    from sa_ejhead.pretrained import MODEL_ZOO_DIR

    _write_json(os.path.join(MODEL_ZOO_DIR, "manifest.json"), manifest)
    with open(DOC, "w") as f:
        f.write(format_table(manifest))
    print(f"[zoo] wrote {os.path.join(MODEL_ZOO_DIR, 'manifest.json')} and {DOC}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(ENTRIES), help="these entries only")
    parser.add_argument(
        "--stage", choices=["train", "all"], default="all", help="train only, or everything"
    )
    parser.add_argument("--table-only", action="store_true", help="rewrite docs/model_zoo.md")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="PyTorch intra-op threads (0: PyTorch's default); 1 on a machine that other jobs share",
    )
    args = parser.parse_args(argv)

    import torch

    from sa_ejhead.pretrained import model_zoo_manifest

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    manifest = model_zoo_manifest()
    if not args.table_only:
        for name in args.only or list(ENTRIES):
            record = train(name, ENTRIES[name])
            if args.stage == "all":
                manifest[ENTRIES[name]] = pack(name, ENTRIES[name], record)
                write_outputs(dict(sorted(manifest.items())))
    write_outputs(dict(sorted(manifest.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
