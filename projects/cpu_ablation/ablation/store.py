"""Where runs live and what is finished: the run directories and the committed results store.

A run of ``config`` with ``seed`` for ``iters`` iterations lives in
``OUTPUT/<config>/<hash>/<seed>/<iters>/`` (Detectron2's logs and checkpoints, and at the end an
atomically written ``results.json``), where ``<hash>`` hashes the fully resolved config and the
sweep's ``--opts``: a run made with another version of a config is never reused. Every finished
``results.json`` is also copied (atomically) to the store ``RESULTS/<config>/<hash>/<seed>/
<iters>.json``, which is committed, so a fresh clone rebuilds the tables and skips finished runs.

A protocol whose sweep is over pins its hashes (``RESULTS/PINNED.json``, config -> hash): its
results stay readable after the configs they were made with change (e.g. the demo configs that
the v1 rows inherit from), and no new run is started for a pinned config.

A change of the code or the configs that leaves every number as it was (a refactor: the same
losses and predictions, as ``tests/test_equality.py`` checks) but changes the resolved text, e.g. a
module path or a setting that was a default before, is recorded in ``RESULTS/ALIASES.json``
(config -> {new hash: old hash}): runs keyed by the new hash read and continue those of the old.
"""

import functools
import hashlib
import json
import math
import os
import statistics

__all__ = [
    "ResultStore",
    "config_hash",
    "evaluation_curve",
    "metrics_rows",
    "seconds_per_iteration",
    "write_json_atomic",
]

PINNED = "PINNED.json"
ALIASES = "ALIASES.json"


def _plain(obj):
    """JSON stand-in for the objects a LazyConfig holds (callables by name, others by repr)."""
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"
    return repr(obj)


@functools.lru_cache(maxsize=None)
def config_hash(config_file, opts=()):
    """10 hex digits of the sha1 of a config file's resolved contents with ``opts`` applied.

    Args:
        config_file (str): a LazyConfig file.
        opts (tuple[str]): ``KEY=VALUE`` overrides.
    """
    from omegaconf import OmegaConf

    from sa_ejhead.engine import load_lazy_config

    cfg = load_lazy_config(config_file, list(opts))
    data = OmegaConf.to_container(cfg, resolve=True)
    text = json.dumps(data, sort_keys=True, default=_plain)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def write_json_atomic(path, data):
    """Write ``data`` as JSON to ``path`` atomically (the engine's temporary file + rename)."""
    from sa_ejhead.engine.checkpoint import atomic_write

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, functools.partial(json.dump, data, indent=1), binary=False)


def read_json(path):
    """The JSON object in ``path``, or None if it is missing, unreadable or not an object."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _listdir(path):
    """The names in ``path``, sorted; none if it is not a directory."""
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def metrics_rows(directory):
    """The JSON objects of a run's ``metrics.json`` (Detectron2's JSONWriter), junk lines skipped;
    empty if the file is missing."""
    rows = []
    try:
        with open(os.path.join(directory, "metrics.json")) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except OSError:
        pass
    return rows


def seconds_per_iteration(directory):
    """Median training time per iteration of a run, from Detectron2's ``metrics.json``, or None.

    ``time`` in ``metrics.json`` is Detectron2's per-iteration wall time (data included), written
    every ``log_period`` iterations; the median ignores the slow first iterations.
    """
    times = [r["time"] for r in metrics_rows(directory) if isinstance(r.get("time"), (int, float))]
    times = [float(t) for t in times if math.isfinite(t)]
    return statistics.median(times) if times else None


def evaluation_curve(directory):
    """The evaluations a run made while training (``train.eval_period``), from ``metrics.json``.

    Returns:
        list[dict]: ``{"iter", "bbox_AP", "segm_AP"}`` in iteration order (empty if none).
    """
    return [
        {"iter": r.get("iteration"), "bbox_AP": r.get("bbox/AP"), "segm_AP": r.get("segm/AP")}
        for r in metrics_rows(directory)
        if "bbox/AP" in r
    ]


class ResultStore:
    """The runs of one protocol: run directories under ``output_dir``, results in ``results_dir``.

    Args:
        config_dir (str): the protocol's configs (``<config>.py``).
        output_dir (str): run directories (logs, checkpoints; not committed).
        results_dir (str or None): the committed results store; None to use only ``output_dir``.
        opts (list[str]): the sweep's ``KEY=VALUE`` overrides, part of every run's key.
    """

    def __init__(self, config_dir, output_dir, results_dir=None, opts=()):
        self.config_dir = config_dir
        self.output_dir = output_dir
        self.results_dir = results_dir or None
        self.opts = tuple(opts)
        pinned = read_json(os.path.join(results_dir, PINNED)) if results_dir else None
        # pins hold for the runs made without overrides
        self.pinned = dict(pinned or {}) if not self.opts else {}
        aliases = read_json(os.path.join(results_dir, ALIASES)) if results_dir else None
        self.aliases = dict(aliases or {})

    def config_file(self, config):
        return os.path.join(self.config_dir, f"{config}.py")

    def has_config(self, config):
        return config in self.pinned or os.path.isfile(self.config_file(config))

    def hash(self, config):
        """The key of ``config``'s runs: its pinned hash, else :func:`config_hash`."""
        if config in self.pinned:
            return self.pinned[config]
        key = config_hash(self.config_file(config), self.opts)
        return self.aliases.get(config, {}).get(key, key)

    def run_dir(self, config, seed, iters):
        """``OUTPUT/<config>/<hash>/<seed>/<iters>``."""
        return os.path.join(self.output_dir, config, self.hash(config), str(seed), str(iters))

    def result_path(self, config, seed, iters):
        """``RESULTS/<config>/<hash>/<seed>/<iters>.json`` (None without a store)."""
        if not self.results_dir:
            return None
        return os.path.join(self.results_dir, config, self.hash(config), str(seed), f"{iters}.json")

    def load(self, config, seed, iters):
        """The finished result of a run (the store's copy first), or None."""
        path = self.result_path(config, seed, iters)
        data = read_json(path) if path else None
        if data is None:
            data = read_json(os.path.join(self.run_dir(config, seed, iters), "results.json"))
        return data

    def lengths(self, config, seeds=None):
        """The iteration counts of ``config``'s finished runs (of ``seeds`` only, when given), in
        the store and in the run directories, sorted."""
        found = set()
        roots = [(self.results_dir, True), (self.output_dir, False)]
        for root, in_store in roots:
            if not root:
                continue
            top = os.path.join(root, config, self.hash(config))
            for seed in _listdir(top):
                if not seed.isdigit() or (seeds is not None and int(seed) not in seeds):
                    continue
                for name in _listdir(os.path.join(top, seed)):
                    stem = name[: -len(".json")] if in_store and name.endswith(".json") else name
                    if not stem.isdigit() or stem in found:
                        continue
                    if self.load(config, int(seed), int(stem)) is not None:
                        found.add(stem)
        return sorted(int(n) for n in found)

    def save(self, config, seed, iters, data):
        """Write a finished run's ``results.json`` and its copy in the store."""
        write_json_atomic(os.path.join(self.run_dir(config, seed, iters), "results.json"), data)
        if self.results_dir:
            write_json_atomic(self.result_path(config, seed, iters), data)

    def publish(self, configs, seeds, iters):
        """Copy finished runs that the store lacks into it; return how many were copied."""
        if not self.results_dir:
            return 0
        copied = 0
        for config in configs:
            for seed in seeds:
                if read_json(self.result_path(config, seed, iters)) is not None:
                    continue
                data = read_json(os.path.join(self.run_dir(config, seed, iters), "results.json"))
                if data is not None:
                    write_json_atomic(self.result_path(config, seed, iters), data)
                    copied += 1
        return copied

    def plan(self, configs, seeds, iters):
        """Runs still to do, seed-major (every config once per seed first); pinned configs are
        finished by definition."""
        return [
            (c, s)
            for s in seeds
            for c in configs
            if c not in self.pinned and self.load(c, s, iters) is None
        ]

    def pin(self, configs):
        """Pin the current hashes of ``configs`` (those with at least one stored result)."""
        pins = dict(self.pinned)
        for config in configs:
            h = self.hash(config)
            if os.path.isdir(os.path.join(self.results_dir, config, h)):
                pins[config] = h
        write_json_atomic(os.path.join(self.results_dir, PINNED), dict(sorted(pins.items())))
        self.pinned = pins
        return pins
