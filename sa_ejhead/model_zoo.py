"""The configs of sa-ejhead: one per row of the paper's tables, and a loader for them.

Like :mod:`detectron2.model_zoo`, but for the files under this repository's ``configs/``
directory (the package is installed editable, so they sit next to it)::

    from sa_ejhead import model_zoo

    cfg = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_SAFPN_EJHead_1x.py")
    cfg = model_zoo.get_config("yacs/mask_rcnn_R_50_SAFPN_EJHead_1x.yaml")  # a yacs CfgNode

``PAPER_ROWS`` maps every row of the paper's Tables 1-5 to its config and the paper's COCO AP;
``python -m sa_ejhead.model_zoo`` prints it as the Markdown table of ``docs/configs.md``.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from detectron2.config import LazyConfig, get_cfg

from .config import add_sa_ejhead_config

__all__ = [
    "PaperRow",
    "PAPER_ROWS",
    "LAZY_CONFIGS",
    "OTHER_CONFIGS",
    "YACS_CONFIGS",
    "get_config_root",
    "get_config_file",
    "get_config",
    "format_paper_table",
]


@dataclass(frozen=True)
class PaperRow:
    """One row of one of the paper's tables and the config that reproduces it.

    Attributes:
        table (str): "Table 1" .. "Table 5".
        row (str): the row's label in the paper.
        config (str): LazyConfig file, relative to ``configs/``.
        box_ap (float): the paper's box AP (COCO val2017; test-dev for Table 1).
        mask_ap (float): the paper's mask AP.
        yacs_config (str or None): the equivalent yacs YAML, relative to ``configs/``, if any.
    """

    table: str
    row: str
    config: str
    box_ap: float
    mask_ap: float
    yacs_config: Optional[str] = None


_D = "COCO-InstanceSegmentation/"
_R50 = "ResNet50-FPN"
_R101 = "ResNet101-FPN"

PAPER_ROWS: Tuple[PaperRow, ...] = (
    # Table 1: comparison with the state of the art, COCO test-dev, 20 epochs.
    PaperRow(
        "Table 1",
        f"Ours, {_R101}",
        _D + "mask_rcnn_R_101_SAFPN_EJHead_20ep.py",
        42.5,
        38.4,
        "yacs/mask_rcnn_R_101_SAFPN_EJHead_20ep.yaml",
    ),
    # Table 2: effects of each component, COCO val2017, 12 epochs.
    PaperRow(
        "Table 2",
        f"Mask R-CNN (Baseline), {_R50}",
        _D + "mask_rcnn_R_50_FPN_1x.py",
        37.2,
        34.1,
        "yacs/mask_rcnn_R_50_FPN_1x.yaml",
    ),
    PaperRow(
        "Table 2",
        f"Mask R-CNN + SA-FPN, {_R50}",
        _D + "mask_rcnn_R_50_SAFPN_1x.py",
        37.8,
        34.6,
        "yacs/mask_rcnn_R_50_SAFPN_1x.yaml",
    ),
    PaperRow(
        "Table 2",
        f"Mask R-CNN + EJ-Head, {_R50}",
        _D + "mask_rcnn_R_50_FPN_EJHead_1x.py",
        38.2,
        34.8,
        "yacs/mask_rcnn_R_50_FPN_EJHead_1x.yaml",
    ),
    PaperRow(
        "Table 2",
        f"Mask R-CNN + SA-FPN + EJ-Head (Ours), {_R50}",
        _D + "mask_rcnn_R_50_SAFPN_EJHead_1x.py",
        38.9,
        35.5,
        "yacs/mask_rcnn_R_50_SAFPN_EJHead_1x.yaml",
    ),
    PaperRow("Table 2", f"Mask R-CNN, {_R101}", _D + "mask_rcnn_R_101_FPN_1x.py", 39.4, 35.9),
    PaperRow(
        "Table 2",
        f"Mask R-CNN + SA-FPN + EJ-Head (Ours), {_R101}",
        _D + "mask_rcnn_R_101_SAFPN_EJHead_1x.py",
        41.0,
        37.3,
    ),
    PaperRow(
        "Table 2",
        f"Cascade Mask R-CNN, {_R50}",
        _D + "cascade_mask_rcnn_R_50_FPN_1x.py",
        41.3,
        35.7,
    ),
    PaperRow(
        "Table 2",
        f"Cascade Mask R-CNN + SA-FPN + EJ-Head, {_R50}",
        _D + "cascade_mask_rcnn_R_50_SAFPN_EJHead_1x.py",
        42.8,
        36.9,
    ),
    # Table 3: FPN designs, ResNet-50, standard Mask R-CNN heads.
    PaperRow("Table 3", "TD-FPN", _D + "mask_rcnn_R_50_FPN_1x.py", 37.2, 34.1),
    PaperRow("Table 3", "BU-FPN", _D + "mask_rcnn_R_50_BUFPN_1x.py", 34.6, 31.8),
    PaperRow("Table 3", "BUF-FPN", _D + "mask_rcnn_R_50_BUFFPN_1x.py", 36.8, 33.7),
    PaperRow("Table 3", "TD-FPN add BUF-FPN", _D + "mask_rcnn_R_50_TDaddBUF_1x.py", 37.0, 33.9),
    PaperRow(
        "Table 3", "SA-FPN (TD-FPN concat BUF-FPN)", _D + "mask_rcnn_R_50_SAFPN_1x.py", 37.9, 34.8
    ),
    # Table 4: EJ-Head ingredients (interleaving, enriched feature, boundary refinement), R-50 FPN.
    PaperRow("Table 4", "Mask R-CNN (Baseline)", _D + "mask_rcnn_R_50_FPN_1x.py", 37.2, 34.1),
    PaperRow("Table 4", "Interleaving", _D + "mask_rcnn_R_50_FPN_EJ_interleave_1x.py", 37.2, 34.5),
    PaperRow(
        "Table 4", "Enriched Feature", _D + "mask_rcnn_R_50_FPN_EJ_enriched_1x.py", 37.6, 34.4
    ),
    PaperRow(
        "Table 4", "Boundary Refinement", _D + "mask_rcnn_R_50_FPN_EJ_refine_1x.py", 37.8, 34.2
    ),
    PaperRow(
        "Table 4",
        "Interleaving + Enriched Feature",
        _D + "mask_rcnn_R_50_FPN_EJ_interleave_enriched_1x.py",
        37.7,
        34.7,
    ),
    PaperRow(
        "Table 4",
        "Mask R-CNN + EJ-Head (all three)",
        _D + "mask_rcnn_R_50_FPN_EJHead_1x.py",
        38.3,
        34.8,
    ),
    # Table 5: Boundary Refinement designs (refinement alone: 7x7 box RoIs, no interleaving).
    PaperRow("Table 5", "None", _D + "mask_rcnn_R_50_FPN_1x.py", 37.2, 34.1),
    PaperRow("Table 5", "Simple Conv x 1", _D + "mask_rcnn_R_50_FPN_EJ_BR_conv1_1x.py", 37.4, 34.1),
    PaperRow("Table 5", "Simple Conv x 2", _D + "mask_rcnn_R_50_FPN_EJ_BR_conv2_1x.py", 37.6, 34.1),
    PaperRow("Table 5", "Simple Conv x 3", _D + "mask_rcnn_R_50_FPN_EJ_BR_conv3_1x.py", 37.6, 34.0),
    PaperRow(
        "Table 5",
        "Simple Conv x 2 + Shortcut (Boundary Refinement)",
        _D + "mask_rcnn_R_50_FPN_EJ_refine_1x.py",
        37.8,
        34.2,
    ),
)

# Every LazyConfig experiment file, once, in the order of first appearance in PAPER_ROWS.
LAZY_CONFIGS: Tuple[str, ...] = tuple(dict.fromkeys(r.config for r in PAPER_ROWS))
# Experiment configs that are no row of the paper (the tests build and train them too).
OTHER_CONFIGS: Tuple[str, ...] = (
    # SA-FPN + EJ-Head within 1.25x of Mask R-CNN's cost (docs/benchmark.md)
    _D
    + "mask_rcnn_R_50_SAFPN_EJHead_efficient_1x.py",
)
# Every yacs experiment file (DefaultTrainer / tools/train_net.py).
YACS_CONFIGS: Tuple[str, ...] = tuple(r.yacs_config for r in PAPER_ROWS if r.yacs_config)


def get_config_root() -> str:
    """Return the repository's ``configs/`` directory.

    Returns:
        str: absolute path of ``configs/`` (next to the ``sa_ejhead`` package of an editable
        install, or ``$SA_EJHEAD_CONFIGS`` if that environment variable is set).
    """
    root = os.environ.get("SA_EJHEAD_CONFIGS")
    if root is None:
        root = str(Path(__file__).resolve().parent.parent / "configs")
    if not os.path.isdir(root):
        raise RuntimeError(
            f"sa-ejhead's configs/ directory was not found at {root}: install the repository with "
            "`pip install -e .` or set $SA_EJHEAD_CONFIGS to its configs/ directory."
        )
    return root


def get_config_file(config_path: str) -> str:
    """Return the real path of one of our config files.

    Args:
        config_path (str): path relative to ``configs/``, e.g.
            "COCO-InstanceSegmentation/mask_rcnn_R_50_SAFPN_EJHead_1x.py".

    Returns:
        str: absolute path of the file.
    """
    cfg_file = os.path.join(get_config_root(), config_path)
    if not os.path.isfile(cfg_file):
        raise RuntimeError(f"{config_path} is not one of sa-ejhead's configs ({cfg_file}).")
    return cfg_file


def get_config(config_path: str):
    """Load one of our configs.

    Args:
        config_path (str): path relative to ``configs/``; a ``.py`` file is a LazyConfig, a
            ``.yaml`` file a yacs config (Detectron2's defaults + :func:`add_sa_ejhead_config`).

    Returns:
        omegaconf.DictConfig or CfgNode: the config, not yet instantiated.
    """
    cfg_file = get_config_file(config_path)
    if cfg_file.endswith(".py"):
        return LazyConfig.load(cfg_file)
    cfg = get_cfg()
    add_sa_ejhead_config(cfg)
    cfg.merge_from_file(cfg_file)
    return cfg


def format_paper_table(our_ap=None, link_prefix: str = "../") -> str:
    """Format ``PAPER_ROWS`` as a Markdown table (the one in ``docs/configs.md``).

    Args:
        our_ap (dict or None): config path -> (box AP, mask AP) we measured; rows without an
            entry say they were not trained.
        link_prefix (str): prefix of the links to the config files: "../" from ``docs/``,
            "" from the repository root (README.md).

    Returns:
        str: the table, one line per paper row.
    """
    our_ap = our_ap or {}
    lines = [
        "| Paper row | Config (LazyConfig; yacs) | Paper box AP | Paper mask AP | Our box / mask AP |",
        "|---|---|---|---|---|",
    ]
    for r in PAPER_ROWS:
        cfg = f"[{os.path.basename(r.config)}]({link_prefix}configs/{r.config})"
        if r.yacs_config:
            cfg += f"; [{os.path.basename(r.yacs_config)}]({link_prefix}configs/{r.yacs_config})"
        ours = our_ap.get(r.config)
        ours = f"{ours[0]:.1f} / {ours[1]:.1f}" if ours else "not trained (needs COCO + GPUs)"
        lines.append(f"| {r.table}: {r.row} | {cfg} | {r.box_ap:.1f} | {r.mask_ap:.1f} | {ours} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_paper_table())
