"""The configs of sa-ejhead: one per row of the paper's tables, and a loader for them.

Like :mod:`detectron2.model_zoo`, for the files of the repository's ``configs/`` folder, which
the package carries as ``sa_ejhead/configs`` (setup.py links or copies it there, so a wheel has
them too)::

    from sa_ejhead import model_zoo

    cfg = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_SAFPN_EJHead_1x.py")
    cfg = model_zoo.get_config("yacs/mask_rcnn_R_50_SAFPN_EJHead_1x.yaml")  # a yacs CfgNode
    model = model_zoo.get("demo/sa_shapes.py", trained=True)  # built, with its trained weights

Trained weights ship for the SA-Shapes demo configs (:func:`trained_configs`; the table with
their AP is ``docs/model_zoo.md``): :func:`get_checkpoint_url` gives their
``sa_ejhead://model_zoo/`` path, usable as ``train.init_checkpoint`` or ``MODEL.WEIGHTS``. No
COCO weights are provided (training them needs COCO and GPUs).

``PAPER_ROWS`` maps every row of the paper's Tables 1-5 to its config and the paper's COCO AP
(the table of ``docs/configs.md``).
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from .errors import SAEJHeadError
from .pretrained import MODEL_ZOO_PREFIX, model_zoo_manifest


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's tables ("Table 1" .. "Table 5"), its LazyConfig and yacs twin (if
    any) relative to ``configs/``, and the paper's box and mask AP (val2017; test-dev in Table 1).
    """

    table: str
    row: str
    config: str
    box_ap: float
    mask_ap: float
    yacs_config: Optional[str] = None


_D = "COCO-InstanceSegmentation/"

# The paper's tables: table | row | config, in configs/COCO-InstanceSegmentation/ (with "+yacs":
# and its twin in configs/yacs/) | paper box AP | paper mask AP. Table 1: COCO test-dev, 20
# epochs; Table 2: the components, val2017, 12 epochs; Table 3: FPN designs with Mask R-CNN's
# heads; Table 4: the EJ-Head ingredients on R-50 FPN; Table 5: Boundary Refinement designs
# (alone: 7x7 box RoIs, no interleaving).
_PAPER_TABLES = """
1 | Ours, ResNet101-FPN | mask_rcnn_R_101_SAFPN_EJHead_20ep +yacs | 42.5 | 38.4
2 | Mask R-CNN (Baseline), ResNet50-FPN | mask_rcnn_R_50_FPN_1x +yacs | 37.2 | 34.1
2 | Mask R-CNN + SA-FPN, ResNet50-FPN | mask_rcnn_R_50_SAFPN_1x +yacs | 37.8 | 34.6
2 | Mask R-CNN + EJ-Head, ResNet50-FPN | mask_rcnn_R_50_FPN_EJHead_1x +yacs | 38.2 | 34.8
2 | Mask R-CNN + SA-FPN + EJ-Head (Ours), ResNet50-FPN | mask_rcnn_R_50_SAFPN_EJHead_1x +yacs
  | 38.9 | 35.5
2 | Mask R-CNN, ResNet101-FPN | mask_rcnn_R_101_FPN_1x | 39.4 | 35.9
2 | Mask R-CNN + SA-FPN + EJ-Head (Ours), ResNet101-FPN | mask_rcnn_R_101_SAFPN_EJHead_1x
  | 41.0 | 37.3
2 | Cascade Mask R-CNN, ResNet50-FPN | cascade_mask_rcnn_R_50_FPN_1x | 41.3 | 35.7
2 | Cascade Mask R-CNN + SA-FPN + EJ-Head, ResNet50-FPN | cascade_mask_rcnn_R_50_SAFPN_EJHead_1x
  | 42.8 | 36.9
3 | TD-FPN | mask_rcnn_R_50_FPN_1x | 37.2 | 34.1
3 | BU-FPN | mask_rcnn_R_50_BUFPN_1x | 34.6 | 31.8
3 | BUF-FPN | mask_rcnn_R_50_BUFFPN_1x | 36.8 | 33.7
3 | TD-FPN add BUF-FPN | mask_rcnn_R_50_TDaddBUF_1x | 37.0 | 33.9
3 | SA-FPN (TD-FPN concat BUF-FPN) | mask_rcnn_R_50_SAFPN_1x | 37.9 | 34.8
4 | Mask R-CNN (Baseline) | mask_rcnn_R_50_FPN_1x | 37.2 | 34.1
4 | Interleaving | mask_rcnn_R_50_FPN_EJ_interleave_1x | 37.2 | 34.5
4 | Enriched Feature | mask_rcnn_R_50_FPN_EJ_enriched_1x | 37.6 | 34.4
4 | Boundary Refinement | mask_rcnn_R_50_FPN_EJ_refine_1x | 37.8 | 34.2
4 | Interleaving + Enriched Feature | mask_rcnn_R_50_FPN_EJ_interleave_enriched_1x | 37.7 | 34.7
4 | Mask R-CNN + EJ-Head (all three) | mask_rcnn_R_50_FPN_EJHead_1x | 38.3 | 34.8
5 | None | mask_rcnn_R_50_FPN_1x | 37.2 | 34.1
5 | Simple Conv x 1 | mask_rcnn_R_50_FPN_EJ_BR_conv1_1x | 37.4 | 34.1
5 | Simple Conv x 2 | mask_rcnn_R_50_FPN_EJ_BR_conv2_1x | 37.6 | 34.1
5 | Simple Conv x 3 | mask_rcnn_R_50_FPN_EJ_BR_conv3_1x | 37.6 | 34.0
5 | Simple Conv x 2 + Shortcut (Boundary Refinement) | mask_rcnn_R_50_FPN_EJ_refine_1x | 37.8 | 34.2
"""


def _paper_row(line):
    table, row, config, box_ap, mask_ap = (c.strip() for c in line.split("|"))
    stem = config.split()[0]
    yacs = f"yacs/{stem}.yaml" if config.endswith("+yacs") else None
    return PaperRow(f"Table {table}", row, f"{_D}{stem}.py", float(box_ap), float(mask_ap), yacs)


PAPER_ROWS: Tuple[PaperRow, ...] = tuple(
    _paper_row(line) for line in _PAPER_TABLES.replace("\n  |", " |").strip().splitlines()
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
    """The folder of sa-ejhead's configs: ``$SA_EJHEAD_CONFIGS`` if set; else the package's
    ``configs/`` (a wheel, or the link that setup.py makes in a checkout); else the repository's
    ``configs/`` next to the package (a checkout that was never installed)."""
    root = os.environ.get("SA_EJHEAD_CONFIGS")
    if root is None:
        here = Path(__file__).resolve().parent
        candidates = [here / "configs", here.parent / "configs"]
        root = str(next((c for c in candidates if c.is_dir()), candidates[0]))
    if not os.path.isdir(root):
        raise RuntimeError(
            f"sa-ejhead's configs were not found at {root}: reinstall the package (`pip install "
            ".` carries them) or set $SA_EJHEAD_CONFIGS to the repository's configs/ folder."
        )
    return root


def get_config_file(config_path: str) -> str:
    """The path of one of our config files, given relative to ``configs/``."""
    cfg_file = os.path.join(get_config_root(), config_path)
    if not os.path.isfile(cfg_file):
        raise RuntimeError(f"{config_path} is not one of sa-ejhead's configs ({cfg_file}).")
    return cfg_file


class ModelZooError(SAEJHeadError, RuntimeError):
    """A config of the model zoo that has no trained weights (a RuntimeError, as Detectron2's)."""


def trained_configs() -> Tuple[str, ...]:
    """The configs (relative to ``configs/``) that have trained weights in the package."""
    return tuple(sorted(model_zoo_manifest()))


def zoo_config_path(config_file: str) -> Optional[str]:
    """``config_file`` (a path) relative to ``configs/`` if it is one of our config files (in
    the repository or in the installed package), else None."""
    root = os.path.realpath(get_config_root())
    path = os.path.realpath(config_file)
    if os.path.commonpath([root, path]) != root:
        return None
    return os.path.relpath(path, root).replace(os.sep, "/")


def get_checkpoint_url(config_path: str) -> str:
    """The ``sa_ejhead://model_zoo/`` path of the trained weights of a config (relative to
    ``configs/``), for ``train.init_checkpoint`` or ``MODEL.WEIGHTS``; :class:`ModelZooError`
    (one line, listing the configs that have weights) when it has none."""
    entry = model_zoo_manifest().get(config_path)
    if entry is None:
        known = ", ".join(trained_configs()) or "none"
        raise ModelZooError(
            f"{config_path}: sa-ejhead's model zoo has no trained weights for this config (it has "
            f"them for: {known}; no COCO weights are provided, see docs/model_zoo.md)"
        )
    return MODEL_ZOO_PREFIX + entry["file"]


def get_config(config_path: str, trained: bool = False):
    """Load one of our configs (path relative to ``configs/``), a LazyConfig or a yacs
    ``CfgNode``, with :func:`sa_ejhead.engine.load_config`. With ``trained=True`` its weights
    (``train.init_checkpoint`` or ``MODEL.WEIGHTS``) are the zoo's (:func:`get_checkpoint_url`)."""
    from .engine import load_config, set_config_weights

    url = get_checkpoint_url(config_path) if trained else None
    cfg = load_config(get_config_file(config_path))
    if url is not None:
        set_config_weights(cfg, url)
    return cfg


def get(config_path: str, trained: bool = False, device: Optional[str] = None):
    """A model of one of our configs, as Detectron2's ``model_zoo.get``: built on ``device``
    (default: CUDA if available, else the CPU), in training mode, with the config's weights
    loaded (``trained=True``: the zoo's trained weights, :func:`get_checkpoint_url`; else the
    config's own initial weights, e.g. a pre-trained backbone)."""
    import torch

    from .engine import build_config_model, config_weights, load_weights

    cfg = get_config(config_path, trained)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = build_config_model(cfg, device)
    load_weights(model, config_weights(cfg))  # "" loads nothing
    return model
