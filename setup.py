import glob
import os
import shutil

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.realpath(__file__))


def get_model_zoo_configs():
    """Put ``configs/`` inside the package as ``sa_ejhead/configs``, as Detectron2's setup.py does
    for its model zoo: a link in a source checkout (an editable install sees edits at once), a
    copy where links fail. Returns the files, relative to the package, for ``package_data``."""
    source = os.path.join(HERE, "configs")
    destination = os.path.join(HERE, "sa_ejhead", "configs")
    if os.path.isdir(source):  # a source checkout; an sdist carries the package's copy instead
        if os.path.islink(destination):
            os.unlink(destination)
        elif os.path.isdir(destination):
            shutil.rmtree(destination)
        try:
            os.symlink(os.path.join("..", "configs"), destination)
        except OSError:
            shutil.copytree(source, destination)
    return [
        os.path.relpath(p, os.path.join(HERE, "sa_ejhead"))
        for ext in ("py", "yaml")
        for p in glob.glob(os.path.join(destination, "**", f"*.{ext}"), recursive=True)
    ]


setup(
    name="sa-ejhead",
    version="0.1.0",
    license="Apache-2.0",
    description="SA-FPN and EJ-Head for Detectron2 (Ni & Yao, multi-task learning via scale aware "
    "feature pyramid networks and effective joint head)",
    packages=find_packages(include=["sa_ejhead", "sa_ejhead.*"], exclude=["sa_ejhead.configs*"]),
    # the model-zoo configs, the pre-trained demo backbones (sa_ejhead://pretrained/...) and the
    # trained SA-Shapes models with their manifest (sa_ejhead://model_zoo/...)
    package_data={
        "sa_ejhead": get_model_zoo_configs()
        + ["pretrained_weights/*.pth", "pretrained_weights/*.pth.xz"]
        + ["model_zoo_weights/*.pth.xz", "model_zoo_weights/manifest.json"]
    },
    python_requires=">=3.10",
    install_requires=[
        # a range, so that `pip install -e .` keeps a user's own (e.g. CUDA) build; `make setup`
        # (tools/bootstrap.py) installs the tested pair torch==2.14.1 + torchvision==0.29.1
        "torch>=2.0",
        "torchvision>=0.15",
        # Detectron2 itself: installed by tools/bootstrap.py (repacked sal-detectron2==0.7.2
        # wheel, or the official source build); its own dependencies follow.
        "fvcore>=0.1.5",
        "iopath>=0.1.9",
        "pycocotools>=2.0.2",
        "opencv-python-headless",
        "numpy<2",
        "setuptools<81",
        "matplotlib",
        "omegaconf>=2.1,<2.4",
        "hydra-core>=1.1",
        "cloudpickle",
        "tabulate",
        "termcolor",
        "yacs",
        "Pillow",
        "tqdm",
        # COCO evaluation in C++ (sa_ejhead.evaluation.COCOEvaluator); the repacked Detectron2
        # wheel has no fast COCOeval of its own
        "faster-coco-eval>=1.6",
    ],
    extras_require={
        # black is pinned: `make lint` (run by .ci/run) checks the formatting, and black changes
        # its style
        "dev": ["pytest", "pytest-timeout", "pytest-xdist", "black==26.10.1"],
        # export to ONNX and run it (sa_ejhead.export, tools/deploy/export_model.py); tested with
        # onnx 1.23.2 and onnxruntime 1.32.0 (CPU); RoiAlign's half-pixel mode needs opset 16
        "deploy": ["onnx>=1.16", "onnxruntime>=1.16"],
    },
)
