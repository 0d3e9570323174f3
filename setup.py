from setuptools import find_packages, setup

setup(
    name="sa-ejhead",
    version="0.1.0",
    license="Apache-2.0",
    description="SA-FPN and EJ-Head for Detectron2 (Ni & Yao, multi-task learning via scale aware "
    "feature pyramid networks and effective joint head)",
    packages=find_packages(include=["sa_ejhead", "sa_ejhead.*"]),
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
        # black is pinned: tests/test_env.py checks the formatting, and black changes its style
        "dev": ["pytest", "pytest-timeout", "black==26.10.1"]
    },
)
