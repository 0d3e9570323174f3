"""Protocol v3 (issue 29): the pilot's rule, the equal-cost rows, the sweep's order, the frontier
and the Markdown blocks of docs/ablation.md's "Protocol v3".

* **Pilot** (:func:`pilot_decision`): v3 is the shortest (rate, length) at which doubling the
  length moves the baseline's box AP (seed 0) by less than ``CONVERGED_AP``; the rate is the
  pilot rate whose baseline has the higher box + mask AP at the longest length finished at every
  rate. The pilot table says whether the stored results confirm ``(V3_LR, V3_ITERS)``
  ("chosen"), cannot tell yet ("pending", with the run that decides) or choose another pair
  ("differs").
* **Equal cost** (:func:`equal_cost_iters`): the baseline trained for ``round(V3_ITERS *
  ratio)`` iterations, ``ratio`` being a model's training time per iteration over the
  baseline's, read from the committed timing file (``RESULTS/v3_timing.json``, written by
  ``time_rows.py``), so that these rows' lengths do not move with each measurement. The
  schedule's warm-up and cosine decay are fractions of ``train.max_iter``, so a longer run has
  the same schedule shape.
* **Frontier** (:func:`frontier_points`): box and mask AP against training core-seconds
  (iterations x s/iter x threads) of every finished (row, length) at v3's rate.
"""

import math
import os
import statistics

from .protocols import (
    BOX_MASK,
    CONVERGED_AP,
    EQUAL_COST,
    FRONTIER_ROWS,
    PILOT_LENGTHS,
    PILOT_RATES,
    PILOT_ROWS,
    PILOT_SEED,
    V3_COMPONENTS,
    V3_ITERS,
    V3_LR,
    V3_MAIN,
    V3_TABLES,
    lr_opts,
)
from .store import ResultStore, read_json
from .tables import (
    _cell,
    ap_figures,
    ap_header,
    compare,
    format_tables,
    mean_std,
    seeds_cell,
    summarize,
    verdicts,
)

__all__ = [
    "TIMING_FILE",
    "pilot_lookup",
    "pilot_decision",
    "pilot_markdown",
    "read_timing",
    "equal_cost_iters",
    "equal_cost_claims",
    "plan_runs",
    "sweep_progress",
    "equal_cost_markdown",
    "frontier_points",
    "frontier_markdown",
    "markdown_blocks",
    "key_lr",
]

TIMING_FILE = "v3_timing.json"
LABELS = {config: cells[0] for config, cells in V3_TABLES["V3"][2]}
MARKERS = {
    "pilot": "cpu-ablation-v3-pilot",
    "equal_cost": "cpu-ablation-v3-equal-cost",
    "frontier": "cpu-ablation-v3-frontier",
}


# --- the pilot ------------------------------------------------------------------------------------
def pilot_lookup(store):
    """``result(config, lr, iters)``: the pilot seed's finished result of ``config`` at learning
    rate ``lr`` (the keyed override ``optimizer.lr=lr`` alone, as the pilot's runs were made) in
    ``store``'s configs and directories, or None."""
    stores = {}

    def result(config, lr, iters):
        if lr not in stores:
            stores[lr] = ResultStore(
                store.config_dir, store.output_dir, store.results_dir, lr_opts(lr)
            )
        return stores[lr].load(config, PILOT_SEED, iters)

    return result


def _box_mask(result):
    if result is None:
        return None
    box, mask = result.get("bbox", {}).get("AP"), result.get("segm", {}).get("AP")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (box, mask)):
        return None
    return float(box), float(mask)


def pilot_decision(
    result,
    rates=PILOT_RATES,
    lengths=PILOT_LENGTHS,
    chosen=(V3_LR, V3_ITERS),
    threshold=CONVERGED_AP,
    row="baseline",
):
    """The pilot's rule on the finished runs.

    Args:
        result: ``result(config, lr, iters)`` -> the pilot seed's results dict or None
            (:func:`pilot_lookup`).
        rates, lengths: the pilot's rates and its lengths (the first is where the doubling
            starts).
        chosen: the (rate, length) the protocol runs (``V3_LR``, ``V3_ITERS``).
        threshold: doubling must move the box AP by less than this.

    Returns:
        dict: ``status`` ("chosen": the rule gives ``chosen``; "differs": it gives another pair;
        "pending": a run it needs has not finished), ``rate`` (the better rate, None before both
        rates have a common length), ``compared_at`` (the length the rates were compared at),
        ``ap`` (rate -> (box, mask) there), ``steps`` ((length, 2 x length, box AP difference)
        in order), ``length`` (the rule's length, or None), ``needs`` ((rate, length) runs it
        waits for) and ``rejects_chosen`` (the finished runs already rule ``chosen`` out: another
        rate is better, or doubling its length moved the box AP by ``threshold`` or more).
    """

    def ap(lr, n):
        return _box_mask(result(row, lr, n))

    out = {"status": "pending", "rate": None, "compared_at": None, "ap": {}, "steps": []}
    out.update(length=None, needs=[], rejects_chosen=False)
    common = [n for n in lengths if all(ap(lr, n) is not None for lr in rates)]
    if not common:
        out["needs"] = [(lr, n) for lr in rates for n in lengths[:1] if ap(lr, n) is None]
        return out
    out["compared_at"] = n = max(common)
    out["ap"] = {lr: ap(lr, n) for lr in rates}
    rate = out["rate"] = max(rates, key=lambda lr: sum(out["ap"][lr]))
    out["rejects_chosen"] = rate != chosen[0]
    length = lengths[0]
    while True:
        short, long = ap(rate, length), ap(rate, 2 * length)
        if short is None or long is None:
            out["needs"] = [
                (rate, m) for m, v in ((length, short), (2 * length, long)) if v is None
            ]
            return out
        delta = long[0] - short[0]
        out["steps"].append((length, 2 * length, delta))
        if abs(delta) < threshold:
            out["length"] = length
            out["status"] = "chosen" if (rate, length) == tuple(chosen) else "differs"
            out["rejects_chosen"] = out["status"] == "differs"
            return out
        out["rejects_chosen"] |= length == chosen[1]
        length *= 2


def _curve_text(result, iters):
    """``300: 23.0 / 18.0, 600: ...``: box / mask AP after each evaluation of a run."""
    points = []
    for point in result.get("curve") or []:
        n, box, mask = point.get("iter"), point.get("bbox_AP"), point.get("segm_AP")
        if not isinstance(n, int) or box is None or mask is None:
            continue
        points.append(f"{min(n + 1, iters)}: {box:.1f} / {mask:.1f}")
    return ", ".join(points)


def pilot_markdown(store, chosen=(V3_LR, V3_ITERS)):
    """The pilot's table (box / mask AP of its seed per row, rate and length, and the second
    row's difference to the first where both finished: one seed, so a figure, no verdict), each
    run's AP curve, the rule's steps and its status for ``chosen``."""
    result = pilot_lookup(store)
    decision = pilot_decision(result, chosen=chosen)
    columns = _pilot_columns(result, decision)
    head = ["row"] + [f"lr {lr:g}, {n} it" for lr, n in columns]
    lines = [
        f"**Pilot** (seed {PILOT_SEED}; box / mask AP at the end of each run; v2's configs with "
        f"the rate as `--opts optimizer.lr=...`; in bold: v3's pair)",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    curves, aps = [], {}
    for config in PILOT_ROWS:
        cells = [f"`{config}`"]
        for lr, n in columns:
            r = result(config, lr, n)
            ap = aps[config, lr, n] = _box_mask(r)
            cell = "-" if ap is None else f"{ap[0]:.1f} / {ap[1]:.1f}"
            if ap is not None and (lr, n) == tuple(chosen):
                cell = f"**{cell}**"
            cells.append(cell)
            if ap is not None and _curve_text(r, n):
                curves.append(f"- `{config}`, lr {lr:g}, {n} it: {_curve_text(r, n)}")
        lines.append("| " + " | ".join(cells) + " |")
    better, worse = PILOT_ROWS[1], PILOT_ROWS[0]
    cells = [f"`{better}` - `{worse}` (one seed)"]
    for lr, n in columns:
        a, b = aps[better, lr, n], aps[worse, lr, n]
        cells.append("-" if a is None or b is None else f"{a[0] - b[0]:+.1f} / {a[1] - b[1]:+.1f}")
    lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _rule_text(decision, chosen)]
    if curves:
        lines += ["", "AP curves (box / mask AP after N iterations; each run's own schedule):", ""]
        lines += curves
    return "\n".join(lines)


def _pilot_columns(result, decision):
    """The pilot table's ``(rate, length)`` columns, rate-major: of the pilot's lengths and the
    lengths the rule's doublings reached, those where a pilot row has finished or the rule waits."""
    lengths = set(PILOT_LENGTHS) | {long for _, long, _ in decision["steps"]}
    lengths |= {n for _, n in decision["needs"]}
    return [
        (lr, n)
        for lr in PILOT_RATES
        for n in sorted(lengths)
        if (lr, n) in decision["needs"]
        or any(_box_mask(result(config, lr, n)) is not None for config in PILOT_ROWS)
    ]


def _rule_text(decision, chosen):
    lr0, n0 = chosen
    rule = (
        f"The rule: v3 is the shortest (rate, length) at which doubling the length moves the "
        f"baseline's box AP (seed {PILOT_SEED}) by less than {CONVERGED_AP:g} point; the rate is "
        "the one whose baseline has the higher box + mask AP at the longest length finished at "
        "every rate."
    )
    items = []
    if decision["rate"] is not None:
        at = decision["compared_at"]
        figures = "; ".join(
            f"lr {lr:g}: {box:.1f} + {mask:.1f}" for lr, (box, mask) in decision["ap"].items()
        )
        items.append(f"- Rate, at {at} iterations ({figures}): lr {decision['rate']:g}.")
    for short, long, delta in decision["steps"]:
        verdict = "converged" if abs(delta) < CONVERGED_AP else f"not under {CONVERGED_AP:g}"
        items.append(
            f"- lr {decision['rate']:g}, {short} -> {long} iterations: box AP {delta:+.1f} "
            f"({verdict})."
        )
    needs = ", ".join(f"lr {lr:g} for {n} iterations" for lr, n in decision["needs"])
    if decision["status"] == "chosen":
        status = (
            f"**Status: chosen.** v3 = lr {lr0:g}, {n0} iterations (`V3_LR`, `V3_ITERS` in "
            "`projects/cpu_ablation/ablation/protocols.py`)."
        )
    elif decision["status"] == "differs":
        status = (
            f"**Status: the rule gives lr {decision['rate']:g}, {decision['length']} iterations, "
            f"not v3's lr {lr0:g}, {n0} iterations**: change `V3_LR`, `V3_ITERS` in "
            "`projects/cpu_ablation/ablation/protocols.py` (a new key: new v3 runs)."
        )
    elif decision["rejects_chosen"]:
        status = (
            f"**Status: pending, and not lr {lr0:g}, {n0} iterations**: the rule has ruled "
            f"v3's pair out and waits for the baseline, seed {PILOT_SEED}, at {needs}; then "
            "change `V3_LR`, `V3_ITERS` in `projects/cpu_ablation/ablation/protocols.py`."
        )
    else:
        status = (
            f"**Status: pending**: waiting for the baseline, seed {PILOT_SEED}, at {needs}. Until "
            f"then v3 runs at lr {lr0:g} for {n0} iterations provisionally."
        )
    return "\n".join([rule, ""] + items + ["", status])


# --- equal training cost --------------------------------------------------------------------------
def read_timing(results_dir):
    """The committed timing file (``time_rows.py``) of a results store, or None."""
    return read_json(os.path.join(results_dir, TIMING_FILE)) if results_dir else None


def equal_cost_iters(timing, iters=V3_ITERS):
    """``config -> round(iters * ratio)`` for each equal-cost model (``EQUAL_COST``) whose ratio of
    training time per iteration to the baseline's the timing file holds."""
    ratios = (timing or {}).get("ratios") or {}
    out = {}
    for config, _ in EQUAL_COST:
        ratio = ratios.get(config)
        if isinstance(ratio, (int, float)) and ratio > 0:
            out[config] = int(round(iters * float(ratio)))
    return out


def equal_cost_claims(timing, iters=V3_ITERS):
    """The equal-cost claims: each model at ``iters`` against ``baseline@N`` (None before the
    timing)."""
    lengths = equal_cost_iters(timing, iters)
    return [
        ("C", text, config, f"baseline@{lengths[config]}" if config in lengths else None, BOX_MASK)
        for config, text in EQUAL_COST
    ]


def plan_runs(configs, seeds, iters, timing):
    """Every v3 run, ``(config, seed, iterations)``, in the sweep's order: the pilot's deciding
    run (the baseline's pilot seed at twice the length), the Table 2 and efficient rows, the
    equal-cost baselines, then the component rows; each group seed-major. Only of ``configs``.
    """
    runs = []

    def add(config, seed, n):
        if config in configs and (config, seed, n) not in runs:
            runs.append((config, seed, n))

    if PILOT_SEED in seeds:
        add("baseline", PILOT_SEED, 2 * iters)
    for seed in seeds:
        for config in V3_MAIN:
            add(config, seed, iters)
    lengths = equal_cost_iters(timing, iters)
    for seed in seeds:
        for config, _ in EQUAL_COST:
            if config in lengths:
                add("baseline", seed, lengths[config])
    for seed in seeds:
        for config in V3_COMPONENTS:
            add(config, seed, iters)
    return runs


def sweep_progress(store, runs, timing):
    """One Markdown line: how many of ``runs`` (:func:`plan_runs`) are finished, and the
    core-hours the others take at the timing file's s/iter (runs of rows it has not timed are
    counted, not estimated)."""
    timed = (timing or {}).get("rows") or {}
    threads = int((timing or {}).get("threads") or 1)
    left = [run for run in runs if store.load(*run) is None]
    seconds, untimed = 0.0, 0
    for config, _, n in left:
        spi = (timed.get(config) or {}).get("sec_per_iter")
        if isinstance(spi, (int, float)):
            seconds += n * spi * threads
        else:
            untimed += 1
    line = f"**Sweep progress**: {len(runs) - len(left)} of {len(runs)} runs finished"
    if len(left) > untimed:
        line += (
            f"; the {len(left) - untimed} left of the timed rows take about "
            f"{seconds / 3600:.1f} core-hours at the timed s/iter"
        )
    if untimed:
        line += f"; {untimed} left of rows not timed"
    return line + "."


def _diff(store, better, worse, task, seeds, iters):
    c = compare(store, better, worse, task, "AP", seeds, iters)
    if math.isnan(c["diff"]):
        return "-", f"{c['verdict']} ({c['n'][0]}/{len(seeds)} vs {c['n'][1]}/{len(seeds)})"
    return f"{c['diff']:+.1f} ± {c['se']:.1f}", c["verdict"]


def equal_cost_markdown(store, seeds, iters, timing, command):
    """The timing (machine, date, s/iter and ratios), the equal-cost baseline rows and the
    answers at equal iterations and at equal time."""
    metrics = V3_TABLES["V3"][3]
    if not timing:
        return (
            "_The training time per iteration is not measured yet: "
            f"`{command}` writes it (commit the file); the equal-cost rows run after it._"
        )
    rows = timing.get("rows") or {}
    lengths = equal_cost_iters(timing, iters)
    lines = [
        f"**Training time per iteration** (`time_rows.py`, {timing.get('date', '?')}). "
        f"{timing.get('machine', '?')} {timing.get('cores_available', '?')} core(s) available, "
        f"load average {_load(timing)} at the start. Each row's v3 training (its config at lr "
        f"{_lr(timing)}, the SA-Shapes loader, SGD and the schedule), the rows in turns, "
        f"{timing.get('burst', '?')} iterations a turn, {timing.get('turns', '?')} turns after "
        f"{timing.get('warmup', '?')} untimed; s/iter = median turn / its iterations; ratio = "
        "median of the per-turn ratios to the baseline's turn beside it (range).",
        "",
        "| row | s/iter | ratio to the baseline | equal-cost baseline |",
        "|---|---:|---:|---|",
    ]
    for config, row in rows.items():
        spi = row.get("sec_per_iter")
        ratio = row.get("ratio") or {}
        ratio_text = (
            f"{ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f})"
            if all(k in ratio for k in ("median", "min", "max"))
            else "-"
        )
        eq = (
            f"round({iters} x {ratio['median']:.3f}) = {lengths[config]} it"
            if config in lengths
            else ""
        )
        spi_text = "-" if spi is None else f"{spi:.3f}"
        stale = "" if row.get("config_hash") in (None, store.hash(config)) else " (other config!)"
        lines.append(f"| {LABELS.get(config, config)}{stale} | {spi_text} | {ratio_text} | {eq} |")
    if any(" (other config!)" in line for line in lines):
        lines += ["", "_Some rows were timed with another config than v3's: measure again._"]

    head = ["Baseline trained as long as", "iterations"] + ap_header(metrics) + ["seeds"]
    lines += [
        "",
        f"**Equal training cost: the baseline at lr {V3_LR:g} for as long as each model trains "
        f"{iters} iterations** (mean ± std over seeds)",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 2) + "---|",
    ]
    for config, _ in EQUAL_COST:
        if config not in lengths:
            continue
        s = summarize(store, "baseline", seeds, lengths[config], metrics)
        cells = [LABELS.get(config, config), str(lengths[config])] + ap_figures(s, metrics)
        lines.append("| " + " | ".join(cells + [seeds_cell(s["n"], len(seeds), True)]) + " |")

    lines += [
        "",
        "**At equal iterations and at equal training time** (box / mask AP difference ± its "
        'standard error; "confirms"/"contradicts" beyond 2 standard errors)',
        "",
        "| model vs baseline | baseline iterations | box AP | verdict | mask AP | verdict |",
        "|---|---:|---:|---|---:|---|",
    ]
    for config, _ in EQUAL_COST:
        comparisons = [("equal iterations", "baseline", iters)]
        if config in lengths:
            comparisons.append(("equal time", f"baseline@{lengths[config]}", lengths[config]))
        for what, worse, n in comparisons:
            box, box_v = _diff(store, config, worse, "bbox", seeds, iters)
            mask, mask_v = _diff(store, config, worse, "segm", seeds, iters)
            label = f"{LABELS.get(config, config)}, {what}"
            lines.append(f"| {label} | {n} | {box} | {box_v} | {mask} | {mask_v} |")
    return "\n".join(lines)


def _load(timing):
    load = timing.get("load_average")
    return "?" if not load else " / ".join(f"{v:.1f}" for v in load)


def _lr(timing):
    for opt in timing.get("opts") or []:
        if opt.startswith("optimizer.lr="):
            return opt.split("=", 1)[1]
    return "?"


# --- the frontier ---------------------------------------------------------------------------------
def frontier_points(store, seeds, timing, rows=FRONTIER_ROWS):
    """Box and mask AP (mean, std over the finished seeds) against training core-seconds for every
    finished (row, length) in ``store``.

    Core-seconds = iterations x s/iter x threads, s/iter from the timing file (``source``
    "timed": the rows timed side by side) where it holds the row, else the mean of the runs' own
    ``sec_per_iter`` x ``torch_threads`` ("runs": under whatever load each run had).

    Returns:
        list[dict]: ``config``, ``iters``, ``n``, ``box``, ``mask`` ((mean, std)),
        ``core_s_per_iter``, ``core_s`` and ``source``, by row then length.
    """
    timed = (timing or {}).get("rows") or {}
    points = []
    for config in rows:
        for n in store.lengths(config, seeds):
            results = [r for r in (store.load(config, s, n) for s in seeds) if r is not None]
            if not results:
                continue
            spi = (timed.get(config) or {}).get("sec_per_iter")
            if isinstance(spi, (int, float)):
                per_iter, source = spi * int(timing.get("threads") or 1), "timed"
            else:
                own = [
                    r["sec_per_iter"] * int(r.get("torch_threads") or 1)
                    for r in results
                    if isinstance(r.get("sec_per_iter"), (int, float))
                ]
                if not own:
                    continue
                per_iter, source = statistics.fmean(own), "runs"
            points.append(
                {
                    "config": config,
                    "iters": n,
                    "n": len(results),
                    "box": mean_std([r.get("bbox", {}).get("AP") for r in results]),
                    "mask": mean_std([r.get("segm", {}).get("AP") for r in results]),
                    "core_s_per_iter": per_iter,
                    "core_s": n * per_iter,
                    "source": source,
                }
            )
    return points


SOURCES = {
    "timed": "s/iter timed side by side (`time_rows.py`)",
    "runs": "s/iter the runs' own (`sec_per_iter`, under whatever else the machine ran: the "
    "positions of different runs are not comparable until `time_rows.py`'s file is committed)",
}


def frontier_markdown(points, image_link, seeds):
    """The frontier plot's image and its points as a table."""
    sources = sorted({p["source"] for p in points})
    lines = [f"![Box and mask AP against training core-seconds]({image_link})", ""]
    lines = (lines if image_link else []) + [
        "**Frontier** (lr {}; core-seconds = iterations x s/iter x threads; {}; mean ± std over "
        "seeds)".format(f"{V3_LR:g}", "; ".join(SOURCES[s] for s in sources) or "no points yet"),
        "",
        "| row | iterations | core-s per iteration | core-seconds | box AP | mask AP | seeds |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for p in points:
        lines.append(
            f"| {LABELS.get(p['config'], p['config'])} | {p['iters']} | "
            f"{p['core_s_per_iter']:.3f} ({p['source']}) | {p['core_s']:.0f} | "
            f"{_cell(p['box'], p['n'])} | {_cell(p['mask'], p['n'])} | "
            f"{seeds_cell(p['n'], len(seeds), True)} |"
        )
    return "\n".join(lines)


def frontier_caption(points):
    """The plot's x-axis label: what its core-seconds are made of."""
    sources = sorted({p["source"] for p in points})
    how = {"timed": "s/iter timed side by side", "runs": "runs' own s/iter (rough)"}
    return "training core-seconds (iterations x s/iter x threads; {})".format(
        ", ".join(how[s] for s in sources) or "no runs"
    )


# --- the page -------------------------------------------------------------------------------------
def markdown_blocks(
    protocol,
    store,
    seeds,
    iters,
    link_root="",
    configs=None,
    timing=None,
    image_link="",
    points=None,
    timing_command="",
):
    """The generated blocks of docs/ablation.md's "Protocol v3", as ``markers -> text``: the
    pilot, the ten rows, the verdicts (the paper's claims between them, the efficient setting's,
    and equal cost), the equal-cost rows, the frontier."""
    claims = list(protocol.claims) + equal_cost_claims(timing, iters)
    runs = plan_runs(configs or V3_MAIN + V3_COMPONENTS, seeds, iters, timing)
    tables = format_tables(
        protocol, store, list(protocol.default_tables), seeds, iters, link_root, configs
    )
    return {
        MARKERS["pilot"]: pilot_markdown(store, (key_lr(store), iters)),
        protocol.markers: sweep_progress(store, runs, timing) + "\n\n" + tables,
        protocol.markers
        + "-verdicts": verdicts(
            protocol,
            store,
            seeds,
            iters,
            configs=configs,
            claims=claims,
            title="Verdicts on the paper's claims, the efficient setting and equal cost",
        ),
        MARKERS["equal_cost"]: equal_cost_markdown(store, seeds, iters, timing, timing_command),
        MARKERS["frontier"]: frontier_markdown(
            points if points is not None else frontier_points(store, seeds, timing),
            image_link,
            seeds,
        ),
    }


def key_lr(store):
    """The learning rate of a v3 store's key (the last ``optimizer.lr=...`` of its opts)."""
    lrs = [float(opt.split("=", 1)[1]) for opt in store.opts if opt.startswith("optimizer.lr=")]
    return lrs[-1] if lrs else V3_LR
