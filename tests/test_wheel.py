"""`pip install .` carries the configs and the model zoo's weights: a wheel, installed outside
the repository, loads them."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_SAFPN_EJHead_1x.py"

CHECK = f"""
import os, sa_ejhead
from sa_ejhead import model_zoo
root = model_zoo.get_config_root()
assert root.startswith(os.path.dirname(sa_ejhead.__file__)), root
cfg = model_zoo.get_config("{CONFIG}")
assert cfg.model.backbone._target_.__name__ == "SAFPN"
assert model_zoo.get_config("yacs/mask_rcnn_R_50_SAFPN_EJHead_1x.yaml").MODEL.SAFPN.MODE == "sa"
# the trained weights of the model zoo are installed, and load (sha256 checked, unpacked)
from detectron2.utils.file_io import PathManager
for config in model_zoo.trained_configs():
    local = PathManager.get_local_path(model_zoo.get_checkpoint_url(config))
    assert os.path.getsize(local) > 10**6, local
assert len(model_zoo.trained_configs()) == 2
print("OK", sa_ejhead.__file__)
"""


def _run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_wheel_carries_the_configs(tmp_path):
    # build from a copy, so that the build leaves nothing in the checkout
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "configs"):
        path = os.path.join(ROOT, name)
        (shutil.copytree if os.path.isdir(path) else shutil.copy)(path, src / name)
    pkg = os.path.join(ROOT, "sa_ejhead")
    shutil.copytree(pkg, src / "sa_ejhead", ignore=shutil.ignore_patterns("__pycache__", "configs"))
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(src)],
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("sa_ejhead-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert f"sa_ejhead/configs/{CONFIG}" in names
    assert "sa_ejhead/configs/yacs/Base-SA-EJHead-RCNN-FPN.yaml" in names

    # a fresh environment that sees this one's packages (torch, Detectron2: nothing downloaded)
    # but not its editable sa_ejhead, which lives in the checkout
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    site = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    with open(os.path.join(site, "host_packages.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index"]
        + ["-q", "--disable-pip-version-check", str(wheel)],
        cwd=tmp_path,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("SA_EJHEAD_CONFIGS", "PYTHONPATH")}
    env["SA_EJHEAD_CACHE"] = str(tmp_path / "cache")
    out = _run([py, "-c", CHECK], cwd=tmp_path, env=env)
    assert out.startswith("OK ") and out.split()[1].startswith(site)
