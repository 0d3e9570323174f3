"""Dataset registration: the embedded SA-Shapes sets (registered on import, generated on first
load) and validated COCO-format datasets."""

import functools
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances

from .synthetic import SA_SHAPES_CATEGORIES, ensure_sa_shapes
from .validation import validate_coco_json

# The arguments of sa_ejhead.data.synthetic.generate_sa_shapes for sa_shapes_{train,val}
SA_SHAPES_DEFAULTS = dict(num_train=400, num_val=80, height=192, width=256, seed=0)
# The same for sa_shapes_pretrain_{train,val} (in "sa_shapes_pretrain" beside the default set), on
# which the demo backbone is pre-trained: another seed, so no image of sa_shapes_train/val.
SA_SHAPES_PRETRAIN = dict(num_train=2000, num_val=100, height=192, width=256, seed=1000)


def default_sa_shapes_root():
    """The absolute SA-Shapes folder: ``$SA_SHAPES_ROOT`` if set, else ``sa_shapes`` in
    ``$DETECTRON2_DATASETS`` (default ``datasets``, relative to the current directory)."""
    root = os.environ.get("SA_SHAPES_ROOT") or os.path.join(
        os.environ.get("DETECTRON2_DATASETS", "datasets"), "sa_shapes"
    )
    return os.path.abspath(os.path.expanduser(root))


def prepare_sa_shapes(root=None, **gen_kwargs):
    """Generate the SA-Shapes set in ``root`` (default :func:`default_sa_shapes_root`) with
    ``gen_kwargs`` overriding :data:`SA_SHAPES_DEFAULTS`, unless it is on disk already; return
    its ``info.json`` (parameters, per-split image, annotation and size counts)."""
    params = {**SA_SHAPES_DEFAULTS, **gen_kwargs}
    return ensure_sa_shapes(root or default_sa_shapes_root(), **params)


def _load_sa_shapes(root, split, name, params):
    ensure_sa_shapes(root, **params)
    return load_coco_json(
        os.path.join(root, "annotations", f"{split}.json"), root, dataset_name=name
    )


def register_sa_shapes(root=None, *, prefix="sa_shapes", **gen_kwargs):
    """Register ``{prefix}_train`` and ``{prefix}_val`` (generated on first use, as
    :func:`prepare_sa_shapes`); return the names."""
    root = os.path.abspath(root or default_sa_shapes_root())
    params = {**SA_SHAPES_DEFAULTS, **gen_kwargs}
    names = []
    for split in ("train", "val"):
        name = f"{prefix}_{split}"
        DatasetCatalog.register(name, functools.partial(_load_sa_shapes, root, split, name, params))
        MetadataCatalog.get(name).set(
            json_file=os.path.join(root, "annotations", f"{split}.json"),
            image_root=root,
            evaluator_type="coco",
            thing_classes=[c["name"] for c in SA_SHAPES_CATEGORIES],
            thing_colors=[list(c["color"]) for c in SA_SHAPES_CATEGORIES],
            thing_dataset_id_to_contiguous_id={
                c["id"]: i for i, c in enumerate(SA_SHAPES_CATEGORIES)
            },
        )
        names.append(name)
    return names


def register_coco_instances_checked(name, json_file, image_root, *, require_annotations=True):
    """Validate a COCO-format dataset (:func:`validate_coco_json`, whose summary is returned),
    then register it as Detectron2's ``register_coco_instances``, with its class metadata set
    now, not on first load."""
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    summary = validate_coco_json(json_file, image_root, require_annotations=require_annotations)
    cats = summary["categories"]
    meta = {
        "thing_classes": [c["name"] for c in cats],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)},
    }
    register_coco_instances(name, meta, json_file, image_root)
    return summary


def _register_builtin():
    if "sa_shapes_train" not in DatasetCatalog.list():
        register_sa_shapes()
    if "sa_shapes_pretrain_train" not in DatasetCatalog.list():
        root = os.path.join(os.path.dirname(default_sa_shapes_root()), "sa_shapes_pretrain")
        register_sa_shapes(root, prefix="sa_shapes_pretrain", **SA_SHAPES_PRETRAIN)


_register_builtin()
