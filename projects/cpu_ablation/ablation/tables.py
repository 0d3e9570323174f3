"""The ablation's Markdown: tables of mean ± std over seeds, and a verdict per paper claim."""

import math
import os
import statistics

__all__ = [
    "mean_std",
    "summarize",
    "split_row",
    "seeds_cell",
    "format_table",
    "format_tables",
    "compare",
    "verdicts",
    "write_markdown",
]

TASK_NAMES = {"bbox": "box", "segm": "mask"}
MIN_SEEDS = 3  # seeds on each side before a claim gets a verdict
METRIC_NAMES = {
    "AP": "AP",
    "AP50": "AP50",
    "AP75": "AP75",
    "APs": "AP_S",
    "APm": "AP_M",
    "APl": "AP_L",
}


def mean_std(values):
    """Mean and sample standard deviation (0 for one value) of the finite values; (nan, nan) if
    there are none."""
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(store, config, seeds, iters, metrics=("AP", "APs", "APm", "APl")):
    """Mean ± std over the finished seeds of one config.

    Returns:
        dict: ``n`` (finished seeds), ``sec_per_iter`` and ``(task, metric) -> (mean, std)`` for
        the tasks ``bbox`` and ``segm``.
    """
    results = [store.load(config, s, iters) for s in seeds]
    results = [r for r in results if r is not None]
    out = {"n": len(results), "sec_per_iter": mean_std([r.get("sec_per_iter") for r in results])}
    for task in TASK_NAMES:
        for m in metrics:
            out[(task, m)] = mean_std([r.get(task, {}).get(m) for r in results])
    return out


def split_row(row, iters):
    """A claim's side: ``config`` (at ``iters`` iterations) or ``config@N`` (at N iterations), as
    ``(config, iterations)``."""
    config, _, length = row.partition("@")
    return config, int(length) if length else iters


def seeds_cell(n, total, word=False):
    """Finished seeds of a row: ``2/3``, or ``2/3 seeds`` with ``word``."""
    return f"{n}/{total}" + (" seeds" if word else "")


def _cell(mean_std_pair, n):
    """``mean ± std`` over ``n`` seeds; the mean alone for one seed, ``-`` for none."""
    mean, std = mean_std_pair
    if math.isnan(mean):
        return "-"
    return f"{mean:.1f}" if n == 1 else f"{mean:.1f} ± {std:.1f}"


def ap_header(metrics):
    """The column names of the box then mask ``metrics`` ("box AP", "AP_S", ...)."""
    return [
        f"{TASK_NAMES[task]} {METRIC_NAMES[m]}" if m == "AP" else METRIC_NAMES[m]
        for task in TASK_NAMES
        for m in metrics
    ]


def ap_figures(summary, metrics):
    """The cells (mean ± std) of the box then mask ``metrics`` of a :func:`summarize` result."""
    return [_cell(summary[(task, m)], summary["n"]) for task in TASK_NAMES for m in metrics]


def format_table(protocol, store, table, seeds, iters, link_root="", configs=None):
    """One table as Markdown: the leading columns, box then mask AP figures (mean ± std over the
    finished seeds), training seconds per iteration, finished seeds, the config's link. With
    ``configs``, only the rows of those configs."""
    title, lead, rows, metrics = protocol.tables[table]
    header = list(lead) + ap_header(metrics) + ["s/iter", "seeds", "config"]
    ncols = 2 * len(metrics) + 2
    lines = [
        f"**{title}** ({iters} iterations, mean ± std over seeds)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(lead) + "---:|" * ncols + "---|",
    ]
    for config, cells in rows:
        if configs is not None and config not in configs:
            continue
        s = summarize(store, config, seeds, iters, metrics)
        figures = ap_figures(s, metrics)
        spi = s["sec_per_iter"][0]
        figures.append("-" if math.isnan(spi) else f"{spi:.2f}")
        link = f"[{config}]({link_root}{protocol.config_dir}/{config}.py)"
        done = seeds_cell(s["n"], len(seeds), protocol.seeds_word)
        lines.append("| " + " | ".join(cells + figures + [done, link]) + " |")
    return "\n".join(lines)


def configs_of(protocol, tables, only=None):
    """Unique configs of the given tables, in table order (of those in ``only``, when given)."""
    seen = []
    for t in tables:
        for config, _ in protocol.tables[t][2]:
            if config not in seen and (only is None or config in only):
                seen.append(config)
    return seen


def format_tables(protocol, store, tables, seeds, iters, link_root="", configs=None):
    """All requested tables after a line that counts the finished runs; with ``configs``, only
    those configs' rows (and runs)."""
    shown = configs_of(protocol, tables, configs)
    done = sum(store.load(c, s, iters) is not None for c in shown for s in seeds)
    head = (
        f"_{done} of {len(shown) * len(seeds)} runs finished ({len(shown)} "
        f"config{'s' if len(shown) != 1 else ''} x "
        f"{len(seeds)} seeds, {iters} iterations each)._"
    )
    body = [format_table(protocol, store, t, seeds, iters, link_root, configs) for t in tables]
    return "\n\n".join([head] + body)


def compare(store, better, worse, task, metric, seeds, iters):
    """The difference ``better - worse`` of one metric, its standard error and a verdict.

    ``better`` and ``worse`` are configs at ``iters`` iterations, or ``config@N`` at N (see
    :func:`split_row`; v3's equal-cost rows). The standard error is
    ``sqrt(s_a^2 / n_a + s_b^2 / n_b)`` over the finished seeds; the verdict is "confirms" if the
    difference exceeds 2 standard errors, "contradicts" if it is below -2 standard errors,
    "cannot tell" otherwise, and "under 3 seeds" while either side has fewer than the protocol's
    3 seeds (two values give no usable spread).
    """
    (config_a, iters_a), (config_b, iters_b) = split_row(better, iters), split_row(worse, iters)
    a = summarize(store, config_a, seeds, iters_a, (metric,))
    b = summarize(store, config_b, seeds, iters_b, (metric,))
    (ma, sa), (mb, sb) = a[(task, metric)], b[(task, metric)]
    if a["n"] < MIN_SEEDS or b["n"] < MIN_SEEDS or math.isnan(ma) or math.isnan(mb):
        return {
            "diff": float("nan"),
            "se": float("nan"),
            "verdict": f"under {MIN_SEEDS} seeds",
            "n": (a["n"], b["n"]),
        }
    diff = ma - mb
    se = math.sqrt(sa**2 / a["n"] + sb**2 / b["n"])
    if diff > 2 * se:
        verdict = "confirms"
    elif diff < -2 * se:
        verdict = "contradicts"
    else:
        verdict = "cannot tell"
    return {"diff": diff, "se": se, "verdict": verdict, "n": (a["n"], b["n"])}


def _side_name(row, iters):
    """A claim's side as the verdicts show it: the config, with its iterations where they are not
    the table's."""
    config, length = split_row(row, iters)
    return config if length == iters else f"{config} ({length} it)"


NOT_MEASURED = "no time ratio yet"  # the verdict of an equal-cost claim before the timing


def verdicts(protocol, store, seeds, iters, tables=None, configs=None, claims=None, title=None):
    """Markdown table: each claim of the paper (of ``tables`` only, and of claims between
    ``configs`` only, when given), per metric, the difference ± its standard error and the verdict
    (see :func:`compare`). ``claims``: these instead of the protocol's (a side may be
    ``config@N``, see :func:`split_row`, or None: not measured yet); ``title``: the bold title."""
    title = title or "Verdicts on the paper's claims"
    lines = [
        f"**{title}** ({iters} iterations; difference of the means ± its "
        'standard error over seeds; "confirms"/"contradicts" beyond 2 standard errors)',
        "",
        "| Table | Claim | rows (better vs worse) | metric | difference | verdict |",
        "|---|---|---|---|---:|---|",
    ]
    for table, text, better, worse, metrics in protocol.claims if claims is None else claims:
        if tables is not None and table not in tables:
            continue
        sides = [split_row(row, iters)[0] for row in (better, worse) if row is not None]
        if configs is not None and not all(config in configs for config in sides):
            continue
        for task, metric in metrics:
            name = f"{TASK_NAMES[task]} {METRIC_NAMES[metric]}"
            if better is None or worse is None:
                rows = " vs ".join(_side_name(r, iters) if r else "?" for r in (better, worse))
                lines.append(f"| {table} | {text} | {rows} | {name} | - | {NOT_MEASURED} |")
                continue
            c = compare(store, better, worse, task, metric, seeds, iters)
            diff = "-" if math.isnan(c["diff"]) else f"{c['diff']:+.1f} ± {c['se']:.1f}"
            verdict = c["verdict"]
            if protocol.seeds_word and math.isnan(c["diff"]):
                verdict += " ({}/{} vs {}/{})".format(c["n"][0], len(seeds), c["n"][1], len(seeds))
            rows = f"{_side_name(better, iters)} vs {_side_name(worse, iters)}"
            lines.append(f"| {table} | {text} | {rows} | {name} | {diff} | {verdict} |")
    return "\n".join(lines)


def write_markdown(path, text, markers):
    """Write ``text`` into ``path`` (atomically) between ``<!-- {markers}:start -->`` and
    ``<!-- {markers}:end -->``; a file without both markers gets ``text`` appended with them."""
    from sa_ejhead.engine.checkpoint import atomic_write

    start_mark, end_mark = f"<!-- {markers}:start -->", f"<!-- {markers}:end -->"
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    start = old.find(start_mark)
    end = old.find(end_mark, start) if start >= 0 else -1
    if end >= 0:
        new = old[: start + len(start_mark)] + "\n" + text + "\n" + old[end:]
    else:
        new = (
            old
            + ("\n" if old and not old.endswith("\n") else "")
            + (f"{start_mark}\n{text}\n{end_mark}\n")
        )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: f.write(new), binary=False)
