"""The v3 frontier plot: box and mask AP against training core-seconds (matplotlib, PNG).

The PNG depends on the points only: a fixed figure size and resolution, matplotlib's default
style (whatever the user's matplotlibrc says), no date or software version in its metadata, and
the file is rewritten only when its bytes change, so that ``--table-only`` does not churn it.
"""

import io
import os

__all__ = ["plot_frontier"]

MARKERS = "osD^v<>ph"


def plot_frontier(points, path, labels, xlabel, title=""):
    """Write the frontier of ``points`` (:func:`ablation.v3.frontier_points`) to ``path``.

    Two panels, box and mask AP against core-seconds; one line per row (in the order of
    ``labels``, config -> legend label) through its lengths, error bars = std over seeds, each
    point marked with its seed count. Returns True if the file changed.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_default_style(matplotlib)):
        fig = Figure(figsize=(10, 4.2), dpi=100)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2, sharex=True)
        for ax, task, name in zip(axes, ("box", "mask"), ("box AP", "mask AP")):
            for i, (config, label) in enumerate(labels.items()):
                mine = sorted(
                    (p for p in points if p["config"] == config), key=lambda p: p["core_s"]
                )
                if not mine:
                    continue
                xs = [p["core_s"] for p in mine]
                ys = [p[task][0] for p in mine]
                # one seed has no spread: no bar (a zero-length one would hide the marker)
                errs = [p[task][1] if p["n"] > 1 else float("nan") for p in mine]
                ax.errorbar(
                    xs,
                    ys,
                    yerr=errs,
                    marker=MARKERS[i % len(MARKERS)],
                    markersize=5,
                    capsize=3,
                    linewidth=1,
                    label=label,
                    color=f"C{i}",
                )
                for p, x, y in zip(mine, xs, ys):
                    ax.annotate(
                        f"{p['n']}",
                        (x, y),
                        textcoords="offset points",
                        xytext=(4, -10),
                        fontsize=7,
                        color=f"C{i}",
                    )
            ax.set_ylabel(name)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.grid(True, linewidth=0.4, alpha=0.6)
            if not points:
                ax.text(0.5, 0.5, "no finished runs", ha="center", transform=ax.transAxes)
        axes[0].legend(fontsize=7, loc="lower right")
        fig.suptitle(title or "AP against training cost (numbers: seeds per point)", fontsize=10)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", metadata={"Software": None})
    data = buffer.getvalue()
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except OSError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    from sa_ejhead.engine.checkpoint import atomic_write

    atomic_write(path, lambda f: f.write(data), binary=True)
    return True


def _default_style(matplotlib):
    """matplotlib's default rc settings but the backend (a user's matplotlibrc left out)."""
    style = dict(matplotlib.rcParamsDefault)
    style.pop("backend", None)
    return style
