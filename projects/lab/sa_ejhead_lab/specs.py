"""Config specs of the cost tool: ``[LABEL=]SOURCE[,KEY=VALUE...]``, and the models they build.

SOURCE is

* ``d2://PATH``: a file of Detectron2's model zoo, e.g. ``d2://common/models/mask_rcnn_fpn.py``
  or ``d2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml``;
* an existing file (``.py`` LazyConfig, ``.yaml`` yacs config with our keys added);
* otherwise a path under sa-ejhead's configs (:func:`sa_ejhead.model_zoo.get_config`).

``KEY=VALUE`` pairs are overrides, checked as on the tools' command lines
(:func:`sa_ejhead.engine.load_config`: dotted LazyConfig keys, or yacs keys such as
``MODEL.RESNETS.DEPTH=50``). The neck and head settings of docs/safpn.md and
docs/ejhead.md are such specs (:data:`VARIANTS`).
"""

import os
from dataclasses import dataclass, field
from typing import List

__all__ = [
    "ConfigSpec",
    "parse_spec",
    "load_spec_config",
    "build_model_from_spec",
    "VARIANTS",
    "variant_specs",
]

D2_PREFIX = "d2://"


@dataclass
class ConfigSpec:
    """A config to measure: its ``label`` in the tables, its ``source`` and ``KEY=VALUE``
    ``overrides``."""

    label: str
    source: str
    overrides: List[str] = field(default_factory=list)


def _split_top_level(text, sep=","):
    """Split on ``sep`` outside brackets and quotes (``fc_dims=[512,512]`` stays whole)."""
    parts, depth, quote, current = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _source_and_overrides(text):
    head, *overrides = [t.strip() for t in _split_top_level(text)]
    return head, overrides


def parse_spec(text):
    """Parse ``[LABEL=]SOURCE[,KEY=VALUE...]`` (commas inside brackets or quotes do not split)
    into a :class:`ConfigSpec`; the label defaults to the file name without its extension."""
    head, overrides = _source_and_overrides(text)
    label, source = None, head
    if "=" in head:
        label, source = head.split("=", 1)
    if not source:
        raise ValueError(f"Empty config source in spec {text!r}.")
    for o in overrides:
        if "=" not in o:
            raise ValueError(f"Override {o!r} in spec {text!r} is not KEY=VALUE.")
    if not label:
        label = os.path.splitext(os.path.basename(source))[0]
    return ConfigSpec(label=label, source=source, overrides=overrides)


def load_spec_config(spec):
    """The config (LazyConfig, or yacs with our keys) of a spec (:class:`ConfigSpec` or str),
    overrides applied."""
    from detectron2 import model_zoo as d2_model_zoo

    from sa_ejhead import model_zoo
    from sa_ejhead.engine import is_lazy_config, load_config
    from sa_ejhead.errors import ConfigError

    if isinstance(spec, str):
        spec = parse_spec(spec)
    source = spec.source
    if source.startswith(D2_PREFIX):
        path = d2_model_zoo.get_config_file(source[len(D2_PREFIX) :])
    elif os.path.isfile(source):
        path = source
    else:
        try:
            path = model_zoo.get_config_file(source)
        except RuntimeError as e:
            raise ConfigError(
                f"Config {source!r} is neither a file nor one of sa-ejhead's configs ({e}); "
                f"Detectron2 model-zoo configs are written {D2_PREFIX}PATH."
            ) from None
    if is_lazy_config(path):
        return load_config(path, spec.overrides)
    opts = [part for o in spec.overrides for part in o.split("=", 1)]
    return load_config(path, opts + ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])


def build_model_from_spec(spec, seed=0):
    """The model of a config spec on the CPU, randomly initialised (torch seed ``seed``), in eval
    mode (:func:`sa_ejhead.engine.build_cpu_model`)."""
    from sa_ejhead.engine import build_cpu_model

    return build_cpu_model(load_spec_config(spec), seed=seed)[0]


_NECK = "common/models/mask_rcnn_safpn.py"
_HEAD = "common/models/mask_rcnn_ejhead.py"
_CHEAP = "model.backbone.share_laterals=True,model.backbone.fuse_position=before"
_TD_P2 = "model.backbone.td_only_levels=[p2]"
_BOX7 = (
    "model.roi_heads.box_pooler.output_size=7,model.roi_heads.box_head.input_shape.height=7,"
    "model.roi_heads.box_head.input_shape.width=7"
)
_HEAD7 = (
    "model.roi_heads.box_head.input_shape.height=7,model.roi_heads.box_head.input_shape.width=7"
)
_NO_BR = "model.roi_heads.refinement=null"
_BR = "model.roi_heads.refinement.mode="
_BR_CH = "model.roi_heads.refinement.bottleneck_channels="
_DOWN2 = "model.roi_heads.box_refinement_downsample=2"

# The neck and head settings of docs/safpn.md and docs/ejhead.md, as (label, spec) pairs: the
# model with SA-FPN and Detectron2's heads (necks), or with FPN and the EJ-Head (heads), changed
# by overrides. ``tools/benchmark.py --variants necks|heads`` counts them (variant_specs); the
# first of each is the reference of the ratios.
VARIANTS = {
    "necks": [
        ("td (Detectron2 FPN)", f"{_NECK},model.backbone.mode=td"),
        ("bu", f"{_NECK},model.backbone.mode=bu"),
        ("buf", f"{_NECK},model.backbone.mode=buf"),
        ("td+buf", f"{_NECK},model.backbone.mode=td+buf"),
        ("sa (paper, default)", f"{_NECK}"),
        ("sa, share_laterals", f"{_NECK},model.backbone.share_laterals=True"),
        ("sa, fuse before", f"{_NECK},model.backbone.fuse_position=before"),
        ("sa, td_only p2", f"{_NECK},{_TD_P2}"),
        ("sa, share + before", f"{_NECK},{_CHEAP}"),
        ("sa, share + before + td_only p2", f"{_NECK},{_CHEAP},{_TD_P2}"),
        ("td+buf, share + before", f"{_NECK},model.backbone.mode=td+buf,{_CHEAP}"),
    ],
    "heads": [
        ("Detectron2 heads (7x7 box, no EJ)", "d2://common/models/mask_rcnn_fpn.py"),
        # Table 4 rows (Enriched Feature / Boundary Refinement alone, faithful)
        ("Enriched 14x14, flatten (faithful)", f"{_HEAD},{_NO_BR}"),
        ("BR residual at 7x7 box / 14x14 mask", f"{_HEAD},{_BOX7}"),
        # Table 5 rows (on the 7x7 box head, as the paper's "None" row is the baseline)
        ("BR conv1 (7x7 box)", f"{_HEAD},{_BOX7},{_BR}conv1"),
        ("BR conv2 (7x7 box)", f"{_HEAD},{_BOX7},{_BR}conv2"),
        ("BR conv3 (7x7 box)", f"{_HEAD},{_BOX7},{_BR}conv3"),
        # the full EJ-Head and its cheaper variants
        ("EJ-Head faithful (14 flatten + BR shared)", f"{_HEAD}"),
        ("EJ-Head, BR scope box", f"{_HEAD},model.roi_heads.refinement_scope=box"),
        ("EJ-Head, BR 64 ch", f"{_HEAD},{_BR_CH}64"),
        ("EJ-Head, box BR at 7x7", f"{_HEAD},{_DOWN2},{_HEAD7}"),
        ("EJ-Head, box BR at 7x7 + BR 128 ch", f"{_HEAD},{_DOWN2},{_HEAD7},{_BR_CH}128"),
        ("EJ-Head, box BR at 7x7 + BR 64 ch", f"{_HEAD},{_DOWN2},{_HEAD7},{_BR_CH}64"),
    ],
}


def variant_specs(kind):
    """The :data:`VARIANTS` of ``kind`` ("necks" or "heads") as :class:`ConfigSpec` objects."""
    return [ConfigSpec(label, *_source_and_overrides(spec)) for label, spec in VARIANTS[kind]]
