"""The ablation's protocols: which configs form which table, where their runs and results live.

* ``v1`` (from scratch): the demo-sized rows trained from random initialisation, RoIs assigned
  to levels at canonical size 36, 615 iterations; finished, its hashes pinned. Its ``D``
  tables are the diagnostics that led to v2.
* ``v2`` (pretrained): every row starts from the committed pre-trained backbone, with RoI
  geometry like COCO's, equal positive caps and one variable per row (``configs_v2/_settings.py``);
  lr 0.01 for 1200 iterations: the short schedule.
* ``v3`` (issue 29): v2's configs at the rate and length of the pilot's rule (:data:`V3_LR`,
  :data:`V3_ITERS`), the rate a keyed override (part of the runs' hash, as ``--opts
  optimizer.lr=...`` was for the pilot's runs, which v3 reuses); ten decisive rows, the
  equal-cost baseline rows and the frontier (``ablation/v3.py``).

A table is ``(title, leading column names, rows, metrics)``; a row is ``(config, leading cells)``.
A claim is one sentence of the paper's Tables 2-5 as ``(table, text, better, worse, metrics)``:
``better`` should beat ``worse`` on each of ``metrics`` (``(task, metric)`` pairs).
"""

import os
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # projects/cpu_ablation
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))

AP_SML = ("AP", "APs", "APm", "APl")
AP_DIAG = ("AP", "AP50", "AP75", "APs", "APm", "APl")
BOX_MASK = (("bbox", "AP"), ("segm", "AP"))


def _rows(text):
    """A table's rows from ``text``, one a line: the config, then its leading cells, separated by
    "|" (as in a Markdown table)."""
    rows = []
    for line in text.strip().splitlines():
        config, *cells = (cell.strip() for cell in line.split("|"))
        rows.append((config, cells))
    return rows


def _claims(text):
    """Claims from ``text``, one a line: ``table | sentence | better > worse``, then ``| metrics``
    as comma-separated ``task metric`` pairs where they are not ``BOX_MASK``."""
    claims = []
    for line in text.strip().splitlines():
        table, sentence, rows, *metrics = (part.strip() for part in line.split("|"))
        better, worse = (config.strip() for config in rows.split(">"))
        pairs = (
            tuple(tuple(pair.split()) for pair in metrics[0].split(",")) if metrics else BOX_MASK
        )
        claims.append((table, sentence, better, worse, pairs))
    return claims


_T2 = _rows("""
    baseline | Mask R-CNN (Baseline) | ResNet18-FPN
    safpn | Mask R-CNN + SA-FPN | ResNet18-FPN
    ejhead | Mask R-CNN + EJ-Head | ResNet18-FPN
    safpn_ejhead | Mask R-CNN + SA-FPN + EJ-Head (Ours) | ResNet18-FPN
    r34_baseline | Mask R-CNN | ResNet34-FPN
    r34_safpn_ejhead | Mask R-CNN + SA-FPN + EJ-Head (Ours) | ResNet34-FPN
    cascade_baseline | Cascade Mask R-CNN | ResNet18-FPN
    cascade_safpn_ejhead | Cascade Mask R-CNN + SA-FPN + EJ-Head | ResNet18-FPN
    """)
_T3 = _rows("""
    baseline | TD-FPN
    fpn_bu | BU-FPN
    fpn_buf | BUF-FPN
    fpn_td_add_buf | TD-FPN add BUF-FPN
    safpn | SA-FPN (TD-FPN concat BUF-FPN)
    """)
# leading cells: method | interleaving | enriched feature | boundary refinement
_T4 = _rows("""
    baseline | Mask R-CNN (Baseline) | | |
    ej_interleave | Mask R-CNN | ✓ | |
    ej_enriched | Mask R-CNN | | ✓ |
    ej_refine | Mask R-CNN | | | ✓
    ej_interleave_enriched | Mask R-CNN | ✓ | ✓ |
    ejhead | Mask R-CNN + EJ-Head | ✓ | ✓ | ✓
    """)
_T5 = _rows("""
    baseline | None
    ej_br_conv1 | Simple Conv x 1
    ej_br_conv2 | Simple Conv x 2
    ej_br_conv3 | Simple Conv x 3
    ej_refine | Simple Conv x 2 + Shortcut (BR)
    """)
_TE = _rows("""
    baseline | Mask R-CNN (Baseline)
    safpn_ejhead | SA-FPN + EJ-Head, faithful
    safpn_ejhead_efficient | SA-FPN + EJ-Head, efficient
    """)
PAPER_TABLES = {
    "2": ("Table 2. Effects of each component", ["Model", "Backbone"], _T2, AP_SML),
    "3": ("Table 3. FPN designs", ["FPN design"], _T3, AP_SML),
    "4": (
        "Table 4. EJ-Head components",
        ["Method", "Interleaving", "Enriched Feature", "Boundary Refinement"],
        _T4,
        AP_SML,
    ),
    "5": ("Table 5. Boundary Refinement designs", ["Boundary Refinement (BR)"], _T5, AP_SML),
    "E": ("Efficient vs faithful SA-FPN + EJ-Head (not in the paper)", ["Setting"], _TE, AP_SML),
}

_D = _rows("""
    baseline | v1 baseline | 36 | x1
    ej_enriched | v1 Enriched Feature only | 36 | x1
    diag_baseline_c224 | baseline | 224 | x1
    diag_enriched_c224 | Enriched Feature only | 224 | x1
    diag_baseline_c224_fc1x4 | baseline | 224 | x4
    diag_enriched_c224_fc1x025 | Enriched Feature only | 224 | x0.25
    """)
_D2 = _rows("""
    diag_interleave_c224 | Interleaving only, 224
    diag_interleave_enriched_c224 | Interleaving + Enriched Feature, 224
    diag_refine_c224 | Boundary Refinement only, 224
    diag_refine_c224_zeroinit | Boundary Refinement only, 224, last conv at zero
    """)
DIAGNOSTIC_TABLES = {
    "D": (
        "Diagnostics (a), (b): RoI level assignment and the enriched fc1's learning rate",
        ["Run", "canonical size", "fc1 lr"],
        _D,
        AP_DIAG,
    ),
    "D2": (
        "Diagnostics (d), (f): interleaving with the Enriched Feature; a zero-initialised BR",
        ["Run"],
        _D2,
        AP_DIAG,
    ),
}

# v2's efficient row pools its box RoIs at 7x7 with the fixed sampling ratio 1 (exact for a 14x14
# RoIAlign at ratio 1 + 2x2 average pool); its table E adds a row with the adaptive ratio 0 that the
# efficient model had before (14x14 RoIAlign + average pool), and its own diagnostic.
_V2_TE = _rows("""
    safpn_ejhead_efficient_adaptive | SA-FPN + EJ-Head, efficient, adaptive box sampling
    """)
_V2_D = _rows("""
    baseline | Mask R-CNN (Baseline) | x1 (7x7 input)
    ej_enriched | Enriched Feature only | x0.25
    diag_enriched_fc1x1 | Enriched Feature only | x1
    """)
_V2_TABLES = {
    **PAPER_TABLES,
    "E": (*PAPER_TABLES["E"][:2], _TE + _V2_TE, AP_SML),
    "D": (
        "Diagnostic: the Enriched Feature's fc1 learning rate under v2",
        ["Row", "fc1 lr"],
        _V2_D,
        AP_DIAG,
    ),
}

# The paper's claims (Tables 2-5), each as a comparison of two rows (the format: _claims).
PAPER_CLAIMS = _claims("""
2 | SA-FPN improves Mask R-CNN | safpn > baseline
2 | EJ-Head improves Mask R-CNN | ejhead > baseline
2 | SA-FPN + EJ-Head improves Mask R-CNN | safpn_ejhead > baseline
2 | SA-FPN + EJ-Head beats SA-FPN alone (complementary) | safpn_ejhead > safpn
2 | SA-FPN + EJ-Head beats EJ-Head alone (complementary) | safpn_ejhead > ejhead
2 | Ours improves the deeper backbone (R-34 here) | r34_safpn_ejhead > r34_baseline
2 | Ours improves Cascade Mask R-CNN | cascade_safpn_ejhead > cascade_baseline
3 | TD-FPN beats BU-FPN | baseline > fpn_bu
3 | BUF-FPN beats BU-FPN | fpn_buf > fpn_bu
3 | TD-FPN beats BUF-FPN on small objects | baseline > fpn_buf | bbox APs, segm APs
3 | BUF-FPN beats TD-FPN on large objects | fpn_buf > baseline | bbox APl, segm APl
3 | Concat (SA-FPN) beats add (TD-FPN add BUF-FPN) | safpn > fpn_td_add_buf
3 | SA-FPN beats TD-FPN | safpn > baseline
3 | SA-FPN beats BUF-FPN | safpn > fpn_buf
4 | Interleaving improves mask AP | ej_interleave > baseline | segm AP
4 | The Enriched Feature improves Mask R-CNN | ej_enriched > baseline
4 | Boundary Refinement improves Mask R-CNN | ej_refine > baseline
4 | Interleaving + Enriched Feature improves mask AP | ej_interleave_enriched > baseline | segm AP
4 | The full EJ-Head beats each part alone: vs Boundary Refinement | ejhead > ej_refine
5 | The shortcut helps: BR beats Simple Conv x 2 | ej_refine > ej_br_conv2
5 | BR beats Simple Conv x 1 | ej_refine > ej_br_conv1
5 | BR beats Simple Conv x 3 | ej_refine > ej_br_conv3
5 | Stacked convs help a little: Simple Conv x 2 beats none | ej_br_conv2 > baseline | bbox AP
5 | More stacked convs harm masks: Simple Conv x 3 below x 2 | ej_br_conv2 > ej_br_conv3 | segm AP
""")


# --- protocol v3 (issue 29) ---------------------------------------------------------------------
# v3's learning rate and length: ONE pair, chosen by the pilot's rule (ablation/v3.py,
# pilot_decision): the shortest (rate, length) at which doubling the length moves the baseline's
# box AP by less than CONVERGED_AP. The pilot table in docs/ablation.md says whether the stored
# results confirm it ("chosen") or not yet ("pending"). Changing it changes the v3 runs' key.
# 19200 provisionally: doubling the baseline's length moved its box AP by +2.6 (2400 -> 4800), +1.7
# (4800 -> 9600) and +1.7 (9600 -> 19200) (2026-12-07), so 2400, 4800 and 9600 are ruled out and
# 19200 is the next candidate until the baseline's 38400-iteration run decides.
V3_LR = 0.04
V3_ITERS = 19200
# the pilot: seed 0 of these rows at these rates and lengths (v2's configs, the rate as --opts)
PILOT_ROWS = ("baseline", "safpn_ejhead")
PILOT_RATES = (0.02, 0.04)
PILOT_LENGTHS = (1200, 2400, 4800, 9600)
PILOT_SEED = 0
CONVERGED_AP = 1.0


def lr_opts(lr):
    """The keyed override of a learning rate, as the pilot's runs were made: ``optimizer.lr=0.04``."""
    return (f"optimizer.lr={lr:g}",)


# the ten decisive rows; the sweep runs the first five (Table 2 + efficient), then the
# equal-cost baselines, then the components (ablation/v3.py, plan_runs)
V3_MAIN = ("baseline", "safpn", "ejhead", "safpn_ejhead", "safpn_ejhead_efficient")
V3_COMPONENTS = ("ej_interleave", "ej_enriched", "ej_refine", "fpn_buf", "ej_br_conv2")
_V3 = _rows("""
    baseline | Mask R-CNN (Baseline) | 2-5
    safpn | Mask R-CNN + SA-FPN | 2, 3
    ejhead | Mask R-CNN + EJ-Head | 2, 4
    safpn_ejhead | Mask R-CNN + SA-FPN + EJ-Head (Ours) | 2
    safpn_ejhead_efficient | SA-FPN + EJ-Head, efficient | E
    ej_interleave | Interleaving only | 4
    ej_enriched | Enriched Feature only | 4
    ej_refine | Boundary Refinement only (Simple Conv x 2 + Shortcut) | 4, 5
    fpn_buf | BUF-FPN | 3
    ej_br_conv2 | Simple Conv x 2 (BR without its shortcut) | 5
    """)
assert tuple(config for config, _ in _V3) == V3_MAIN + V3_COMPONENTS
V3_TABLES = {
    "V3": ("Protocol v3: the decisive rows", ["Model", "paper table"], _V3, AP_SML),
}
# the equal-cost comparisons: the model, and the baseline trained for as long (ablation/v3.py)
EQUAL_COST = (
    ("safpn_ejhead", "SA-FPN + EJ-Head beats the baseline at equal training time"),
    (
        "safpn_ejhead_efficient",
        "SA-FPN + EJ-Head, efficient, beats the baseline at equal training time",
    ),
)
# the frontier plot's rows (ablation/v3.py, frontier_points)
FRONTIER_ROWS = V3_MAIN


def _v3_claims():
    """v2's claims between v3's rows (each comparison once), then the efficient setting's."""
    rows = set(V3_MAIN + V3_COMPONENTS)
    claims, seen = [], set()
    for claim in PAPER_CLAIMS:
        table, _, better, worse, metrics = claim
        if better in rows and worse in rows and (better, worse, metrics) not in seen:
            seen.add((better, worse, metrics))
            claims.append(claim)
    return claims + _claims("""
E | Efficient keeps the gains: it improves Mask R-CNN | safpn_ejhead_efficient > baseline
""")


V3_CLAIMS = _v3_claims()


# where a run trains (run_ablation.py / time_rows.py --device); the CPU is the store's default
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Protocol:
    """One protocol of the ablation.

    Attributes:
        name: "v1", "v2" or "v3".
        config_dir: the rows' configs, relative to the repository root.
        results_dir: the committed results store, relative to the repository root.
        output_dir: run directories (relative to the working directory, as train.output_dir).
        iters: default iterations per run.
        tables: table id -> (title, leading columns, rows, metrics).
        default_tables: the tables a sweep runs by default.
        claims: the claims to give verdicts on.
        markers: name of the Markdown markers the tables are written between.
        run_overrides: overrides every run gets after the config and before ``--opts`` (not
            part of the key: v1 evaluates once, at the end, whatever its configs say).
        key_opts: overrides every run gets before ``--opts`` that are part of the key, as if
            given with ``--opts`` (v3's learning rate).
        seeds_word: the tables say "n/3 seeds" (v3), not "n/3".
    """

    name: str
    config_dir: str
    results_dir: str
    output_dir: str
    iters: int
    tables: Dict[str, Tuple] = field(default_factory=dict)
    default_tables: Tuple[str, ...] = ()
    claims: List[Tuple] = field(default_factory=list)
    markers: str = ""
    run_overrides: Tuple[str, ...] = ()
    key_opts: Tuple[str, ...] = ()
    seeds_word: bool = False

    def path(self, relative):
        return os.path.join(REPO_ROOT, relative)

    def store(self, opts=(), device="cpu", output_dir=None, results_dir=None):
        """The :class:`ResultStore` of this protocol's runs on ``device``: the key's overrides
        are ``key_opts`` (v3's rate), then ``opts``. On ``"cuda"`` the key also holds
        ``train.device=cuda`` and the results are stored apart (the committed store's folder +
        ``_cuda``, with its own timing file), so that no mean, ratio or verdict mixes GPU runs
        with CPU runs."""
        from .store import ResultStore

        if device not in DEVICES:
            raise ValueError(f"device {device!r}: expected one of {DEVICES}")
        key = tuple(self.key_opts) + tuple(opts)
        results = self.path(self.results_dir)
        if device != "cpu":
            key += (f"train.device={device}",)
            results += f"_{device}"
        return ResultStore(
            self.path(self.config_dir),
            output_dir or self.output_dir,
            results if results_dir is None else results_dir,
            key,
        )


PROTOCOLS = {
    "v1": Protocol(
        name="v1",
        tables={**PAPER_TABLES, **DIAGNOSTIC_TABLES},
        default_tables=("2", "3", "4", "5", "E"),
        config_dir="projects/cpu_ablation/configs",
        results_dir="projects/cpu_ablation/results",
        output_dir="output/cpu_ablation",
        iters=615,
        markers="cpu-ablation-tables",
        run_overrides=("train.eval_period=0",),
    ),
    "v2": Protocol(
        name="v2",
        tables=_V2_TABLES,
        default_tables=("2", "4", "3", "5", "E"),
        claims=PAPER_CLAIMS,
        config_dir="projects/cpu_ablation/configs_v2",
        results_dir="projects/cpu_ablation/results_v2",
        output_dir="output/cpu_ablation_v2",
        iters=1200,
        markers="cpu-ablation-v2-tables",
    ),
    "v3": Protocol(
        name="v3",
        tables=V3_TABLES,
        default_tables=("V3",),
        claims=V3_CLAIMS,
        # v2's configs and store: the rate is part of the key, so v3's runs never mix with v2's, and
        # the pilot's runs at v3's rate and length are v3's (projects/cpu_ablation/README.md)
        config_dir="projects/cpu_ablation/configs_v2",
        results_dir="projects/cpu_ablation/results_v2",
        output_dir="output/cpu_ablation_v2",
        iters=V3_ITERS,
        markers="cpu-ablation-v3-tables",
        key_opts=lr_opts(V3_LR),
        seeds_word=True,
    ),
}
