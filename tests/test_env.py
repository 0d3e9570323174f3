"""The environment itself: Detectron2's install route, the imports we rely on, our registrations."""

import hashlib
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_bootstrap():
    spec = importlib.util.spec_from_file_location("bootstrap", ROOT / "tools" / "bootstrap.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bootstrap = _load_bootstrap()


def test_detectron2_version_and_imports():
    import detectron2
    from detectron2 import model_zoo
    from detectron2.config import LazyConfig, instantiate  # noqa: F401
    from detectron2.evaluation import COCOEvaluator  # noqa: F401
    from detectron2.utils.visualizer import Visualizer  # noqa: F401

    assert detectron2.__version__ == "0.7.2"
    cfg = model_zoo.get_config("common/models/mask_rcnn_fpn.py")
    assert cfg.model.roi_heads.mask_in_features == ["p2", "p3", "p4", "p5"]
    # The compiled ops are absent (pure-Python repack); nothing we use needs them.
    assert importlib.util.find_spec("detectron2._C") is None


def test_pinned_versions():
    import numpy
    import setuptools
    import torch
    import torchvision

    assert torch.__version__.split("+")[0] == "2.14.1"
    assert torchvision.__version__.split("+")[0] == "0.29.1"
    assert int(setuptools.__version__.split(".")[0]) < 81  # model_zoo imports pkg_resources
    assert int(numpy.__version__.split(".")[0]) < 2
    import pkg_resources  # noqa: F401


def test_sa_ejhead_registers_its_modules():
    import sa_ejhead  # noqa: F401
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY

    assert "build_resnet_safpn_backbone" in BACKBONE_REGISTRY
    assert "EJROIHeads" in ROI_HEADS_REGISTRY
    assert "EJCascadeROIHeads" in ROI_HEADS_REGISTRY
    assert {"sa_shapes_train", "sa_shapes_val"} <= set(DatasetCatalog.list())


def _fake_binary_wheel(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("detectron2/__init__.py", "__version__ = '0.7.2'\n")
        z.writestr("detectron2/_C.cpython-310-x86_64-linux-gnu.so", b"\x7fELF binary")
        z.writestr(
            "sal_detectron2-0.7.2.dist-info/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp310-cp310-linux_x86_64\n",
        )
        z.writestr("sal_detectron2-0.7.2.dist-info/METADATA", "Name: sal-detectron2\n")
        z.writestr("sal_detectron2-0.7.2.dist-info/RECORD", "stale\n")


def test_repack_drops_compiled_library_and_retags(tmp_path):
    src = tmp_path / "sal_detectron2-0.7.2-cp310-none-any.whl"
    _fake_binary_wheel(src)
    out = bootstrap.repack_pure_python(src, tmp_path)
    assert out.name == "sal_detectron2-0.7.2-py3-none-any.whl"
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
        assert not any(n.endswith(".so") for n in names)
        wheel = z.read("sal_detectron2-0.7.2.dist-info/WHEEL").decode()
        assert "Tag: py3-none-any" in wheel and "Root-Is-Purelib: true" in wheel
        record = z.read("sal_detectron2-0.7.2.dist-info/RECORD").decode().splitlines()
        # RECORD lists every file once with its real hash and size.
        listed = {line.split(",")[0]: line.split(",")[1:] for line in record}
        assert set(listed) == set(names)
        data = z.read("detectron2/__init__.py")
        assert listed["detectron2/__init__.py"] == [bootstrap._record_hash(data), str(len(data))]


def test_hash_mismatch_deletes_the_file_and_installs_nothing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    bad = cache / bootstrap.D2_WHEEL
    bad.write_bytes(b"not the real wheel")

    # A cached file with the wrong hash is dropped and downloaded again; make the "download"
    # produce the same wrong bytes, as a tampered index would.
    def fake_run(cmd, step, hint):
        dest = Path(cmd[cmd.index("--dest") + 1])
        (dest / bootstrap.D2_WHEEL).write_bytes(b"tampered")

    monkeypatch.setattr(bootstrap, "run", fake_run)
    with pytest.raises(bootstrap.SetupError, match="sha256 mismatch"):
        bootstrap.fetch_detectron2_wheel(sys.executable, cache)
    assert not bad.exists()
    assert bootstrap.D2_SHA256 != hashlib.sha256(b"tampered").hexdigest()


def test_wrong_python_is_refused_with_advice(monkeypatch):
    monkeypatch.setattr(bootstrap, "SUPPORTED_PYTHON", (3, 99))
    with pytest.raises(bootstrap.SetupError, match=r"Python 3\.99 is required.*PYTHON="):
        bootstrap.check_python()


def test_failed_setup_leaves_no_venv(tmp_path, monkeypatch):
    venv = tmp_path / "venv"

    def failing_run(cmd, step, hint):
        venv.mkdir(exist_ok=True)  # as if the venv had been half made
        raise bootstrap.SetupError(f"{step} failed. {hint}")

    monkeypatch.setattr(bootstrap, "run", failing_run)
    assert bootstrap.main(["--venv", str(venv)]) == 1
    assert not venv.exists()


def test_second_make_test_installs_nothing():
    # `make -q setup` exits 0 only if the stamp is up to date, i.e. a second `make test` reruns no
    # set-up step.
    proc = subprocess.run(["make", "-q", "setup"], cwd=ROOT)
    assert proc.returncode == 0


def test_code_is_black_formatted():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "black",
            "--check",
            "--quiet",
            "-l",
            "100",
            "sa_ejhead",
            "tools",
            "tests",
            "configs",
            "projects",
            "setup.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, "run `make format`:\n" + proc.stderr
