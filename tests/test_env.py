"""The environment: the imports we rely on, our registrations, and the bootstrap's logic.

The bootstrap's exact versions are not asserted here (the suite must pass on any correct install,
e.g. the official Detectron2 source build or your own torch): tools/check_setup.py checks them
when `make setup` builds .venv.
"""

import importlib.util
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


def test_detectron2_imports_and_model_zoo():
    # Behaviour only: any correct install passes (the bootstrap's exact versions are checked by
    # tools/check_setup.py when `make setup` builds .venv).
    from detectron2 import model_zoo
    from detectron2.config import LazyConfig, instantiate  # noqa: F401
    from detectron2.evaluation import COCOEvaluator  # noqa: F401
    from detectron2.utils.visualizer import Visualizer  # noqa: F401

    cfg = model_zoo.get_config("common/models/mask_rcnn_fpn.py")
    assert cfg.model.roi_heads.mask_in_features == ["p2", "p3", "p4", "p5"]


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


def _load_check_setup():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        spec = importlib.util.spec_from_file_location(
            "check_setup", ROOT / "tools" / "check_setup.py"
        )
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "tools"))
    return mod


def test_setup_check_names_each_mismatch():
    check = _load_check_setup()
    good = {
        "torch": check.PINS["torch"] + "+cpu",
        "torchvision": check.PINS["torchvision"],
        "detectron2": check.DETECTRON2,
        "setuptools": "80.1",
        "numpy": "1.26.4",
    }
    assert check.find_problems("pypi", good, has_compiled_ops=False) == []
    bad = dict(good, torch="2.0.0", numpy="2.1.0")
    problems = check.find_problems("pypi", bad, has_compiled_ops=True)
    assert len(problems) == 3
    assert any(p.startswith("torch 2.0.0 is installed") for p in problems)
    assert any("numpy<2" in p for p in problems) and any("_C is present" in p for p in problems)
    # the source build has its compiled ops and any Detectron2 version
    assert check.find_problems("git", dict(good, detectron2="0.8"), has_compiled_ops=True) == []
    assert check.find_problems("git", good, has_compiled_ops=False) == [
        "detectron2._C is missing: the source build compiles it"
    ]
