#!/usr/bin/env python3
"""Check that ``make setup`` built the environment it promises (run by tools/bootstrap.py).

The unit suite (``make test``) asserts behaviour only, so that it passes on any correct install
(your own torch, the official Detectron2 source build). This script asserts what the bootstrap
itself installs: the parts we import, and the exact versions of its route:

* always: the torch/torchvision pair, ``setuptools<81`` (``pkg_resources`` importable, which
  Detectron2's model zoo needs) and ``numpy<2``;
* ``--detectron2 pypi``: Detectron2 0.7.2, repacked without its compiled ``_C`` library;
* ``--detectron2 git``: Detectron2 with its compiled ``_C`` library.

Usage (with the environment's Python): ``.venv/bin/python tools/check_setup.py --detectron2 pypi``.
Exit status 0 when everything holds; otherwise 1 and one line per problem.
"""

import argparse
import importlib.util
import sys

from bootstrap import D2_DIST, TORCH_PAIR  # the pins live in one place: tools/bootstrap.py

PINS = dict(spec.split("==") for spec in TORCH_PAIR)  # {"torch": ..., "torchvision": ...}
DETECTRON2 = D2_DIST.split("==")[1]


def _release(version):
    """``"2.14.1+cu130"`` -> ``"2.14.1"``."""
    return version.split("+")[0]


def _major(version):
    return int(version.split(".")[0])


def check_imports():
    """Import what the package relies on; raise on the first failure."""
    from detectron2 import model_zoo
    from detectron2.config import LazyConfig, get_cfg, instantiate  # noqa: F401
    from detectron2.evaluation import COCOEvaluator  # noqa: F401
    from detectron2.modeling import build_model  # noqa: F401
    from detectron2.utils.visualizer import Visualizer  # noqa: F401

    model_zoo.get_config("common/models/mask_rcnn_fpn.py")
    from sa_ejhead import model_zoo as our_model_zoo

    our_model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_SAFPN_EJHead_1x.py")
    # the [deploy] extra that the set-up installs (tests/test_deploy.py skips without it)
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401


def find_problems(route, versions, has_compiled_ops):
    """Compare the installed versions with what the bootstrap's ``route`` installs.

    Args:
        route (str): "pypi" or "git" (``make setup D2=...``).
        versions (dict[str, str]): installed ``torch``, ``torchvision``, ``detectron2``,
            ``setuptools`` and ``numpy`` versions.
        has_compiled_ops (bool): whether ``detectron2._C`` is importable.

    Returns:
        list[str]: one message per mismatch (empty when everything holds).
    """
    problems = []
    for name, want in PINS.items():
        if _release(versions[name]) != want:
            problems.append(f"{name} {versions[name]} is installed, the bootstrap pins {want}")
    if _major(versions["setuptools"]) >= 81:
        problems.append(f"setuptools {versions['setuptools']}: Detectron2 needs setuptools<81")
    if _major(versions["numpy"]) >= 2:
        problems.append(f"numpy {versions['numpy']}: the bootstrap installs numpy<2")
    if route == "pypi":
        if versions["detectron2"] != DETECTRON2:
            problems.append(
                f"detectron2 {versions['detectron2']} is installed, the bootstrap's PyPI route "
                f"installs {DETECTRON2}"
            )
        if has_compiled_ops:
            problems.append("detectron2._C is present: the repacked wheel has no compiled ops")
    elif not has_compiled_ops:
        problems.append("detectron2._C is missing: the source build compiles it")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectron2", choices=["pypi", "git"], default="pypi")
    args = parser.parse_args(argv)

    check_imports()
    import detectron2
    import numpy
    import setuptools
    import torch
    import torchvision

    import pkg_resources  # noqa: F401  (Detectron2's model zoo imports it)

    versions = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "detectron2": detectron2.__version__,
        "setuptools": setuptools.__version__,
        "numpy": numpy.__version__,
    }
    has_c = importlib.util.find_spec("detectron2._C") is not None
    problems = find_problems(args.detectron2, versions, has_c)
    print("[setup] " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    for p in problems:
        print(f"[setup] ERROR: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
