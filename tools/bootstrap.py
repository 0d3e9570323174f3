#!/usr/bin/env python3
"""Create the project's virtual environment (``.venv``) from nothing.

Run by ``make setup`` (and so by ``make demo`` / ``make test``) with the system Python. It uses
only the standard library, because nothing else is installed yet. Steps:

1. check the Python version;
2. create the venv in ``.venv`` and install ``setuptools<81`` (Detectron2's model_zoo imports
   ``pkg_resources``);
3. install the torch/torchvision pair;
4. install Detectron2, by default from the PyPI redistribution ``sal-detectron2==0.7.2``: download
   the exact cp310 wheel, check its sha256 *before* anything is installed, repack it as a pure
   Python ``py3-none-any`` wheel without the compiled ``_C`` library and install that; or, with
   ``--detectron2 git`` (``make setup D2=git``), build Detectron2 from its official repository;
5. install this package in editable mode with its test and deploy (onnx, onnxruntime) extras;
6. check the environment (``tools/check_setup.py``: the parts we rely on import, and the versions
   are this route's), then write the stamp file ``.venv/.sa_ejhead-ready``.

The Makefile treats ``.venv`` as good only if the stamp exists, and this script deletes any
``.venv`` without a stamp before it starts, so a failed or interrupted set-up is never mistaken
for a good one. Every failure exits with a message that names the step and what to do.
"""

import argparse
import base64
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP_NAME = ".sa_ejhead-ready"

TORCH_PAIR = ["torch==2.14.1", "torchvision==0.29.1"]
D2_DIST = "sal-detectron2==0.7.2"
D2_WHEEL = "sal_detectron2-0.7.2-cp310-none-any.whl"
D2_SHA256 = "491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561"
D2_GIT = "git+https://github.com/facebookresearch/detectron2.git"
SUPPORTED_PYTHON = (3, 11)
CONSTRAINTS = ROOT / "tools" / "constraints.txt"
# Imports and this route's exact versions, checked before the stamp is written.
CHECK_SETUP = ROOT / "tools" / "check_setup.py"


class SetupError(RuntimeError):
    pass


def log(msg):
    print(f"[setup] {msg}", flush=True)


def run(cmd, step, hint):
    log(" ".join(str(c) for c in cmd))
    proc = subprocess.run([str(c) for c in cmd])
    if proc.returncode != 0:
        raise SetupError(f"{step} failed (exit {proc.returncode}). {hint}")


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _record_hash(data):
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def repack_pure_python(src, dst_dir):
    """Rewrite a Detectron2 binary wheel as ``py3-none-any``, dropping compiled extensions.

    Args:
        src (Path): the downloaded wheel.
        dst_dir (Path): where to write the repacked wheel.

    Returns:
        Path: the repacked wheel.
    """
    with zipfile.ZipFile(src) as zin:
        names = zin.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/WHEEL"))
        name, version = dist_info[: -len(".dist-info")].rsplit("-", 1)
        dst = Path(dst_dir) / f"{name}-{version}-py3-none-any.whl"
        record_name = f"{dist_info}/RECORD"
        rows = []
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
            for info in zin.infolist():
                n = info.filename
                if n == record_name or n.endswith((".so", ".pyd", ".dylib")):
                    continue
                data = zin.read(n)
                if n == f"{dist_info}/WHEEL":
                    lines = []
                    for line in data.decode().splitlines():
                        if line.startswith("Tag:"):
                            line = "Tag: py3-none-any"
                        elif line.startswith("Root-Is-Purelib:"):
                            line = "Root-Is-Purelib: true"
                        lines.append(line)
                    data = ("\n".join(lines) + "\n").encode()
                zout.writestr(n, data)
                rows.append((n, _record_hash(data), str(len(data))))
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerows(rows)
            writer.writerow((record_name, "", ""))
            zout.writestr(record_name, buf.getvalue())
    return dst


def fetch_detectron2_wheel(py, cache):
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / D2_WHEEL
    if wheel.exists() and sha256_of(wheel) != D2_SHA256:
        wheel.unlink()  # a stale or corrupt download: fetch again
    if not wheel.exists():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            run(
                [
                    py,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--only-binary=:all:",
                    "--python-version",
                    "3.10",
                    "--dest",
                    tmp,
                    D2_DIST,
                ],
                "downloading Detectron2 (sal-detectron2==0.7.2) from PyPI",
                "Check that https://pypi.org can be reached (or your pip index / proxy settings), "
                "then run `make setup` again; or use the source build: `make setup D2=git`.",
            )
            got = Path(tmp) / D2_WHEEL
            if not got.exists():
                raise SetupError(f"pip did not produce {D2_WHEEL} in {tmp}")
            os.replace(got, wheel)
    digest = sha256_of(wheel)
    if digest != D2_SHA256:
        wheel.unlink()
        raise SetupError(
            f"sha256 mismatch for {D2_WHEEL}: expected {D2_SHA256}, got {digest}. The file was "
            "deleted and nothing was installed. Your index served a different file: check your "
            "pip index / proxy, or use the source build: `make setup D2=git`."
        )
    log(f"{D2_WHEEL}: sha256 ok")
    return wheel


def check_python():
    if sys.version_info[:2] != SUPPORTED_PYTHON:
        want = ".".join(map(str, SUPPORTED_PYTHON))
        raise SetupError(
            f"Python {want} is required (this is {sys.version.split()[0]} at {sys.executable}). "
            f"Install Python {want} and run `make setup PYTHON=/path/to/python{want}`."
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=str(ROOT / ".venv"))
    parser.add_argument("--detectron2", choices=["pypi", "git"], default="pypi")
    parser.add_argument("--cache", default=str(ROOT / ".cache" / "wheels"))
    args = parser.parse_args(argv)
    venv = Path(args.venv).resolve()
    try:
        check_python()
        if venv.exists():
            log(f"removing {venv}, to build it afresh (incomplete, or older than setup.py)")
            shutil.rmtree(venv)
        run(
            [sys.executable, "-m", "venv", venv],
            "creating the virtual environment",
            "Install the venv module (Debian: `apt install python3.11-venv`).",
        )
        py = venv / "bin" / "python"
        pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "-c", CONSTRAINTS]
        net_hint = "Check that the package index can be reached, then run `make setup` again."
        run(pip + ["setuptools<81", "wheel"], "installing setuptools<81", net_hint)
        run(pip + TORCH_PAIR, "installing torch/torchvision", net_hint)
        if args.detectron2 == "pypi":
            wheel = fetch_detectron2_wheel(py, Path(args.cache))
            with tempfile.TemporaryDirectory() as tmp:
                pure = repack_pure_python(wheel, tmp)
                run(pip + [pure], "installing the repacked Detectron2 wheel", net_hint)
        else:
            run(
                pip + ["--no-build-isolation", D2_GIT],
                "building Detectron2 from source",
                "The source build needs https://github.com to be reachable and a C++ compiler.",
            )
        run(pip + ["-e", f"{ROOT}[dev,deploy]"], "installing sa_ejhead (editable)", net_hint)
        run(
            [py, CHECK_SETUP, "--detectron2", args.detectron2],
            "checking the installed packages",
            "An import failed or a version differs: see the messages above.",
        )
        (venv / STAMP_NAME).write_text(" ".join(TORCH_PAIR + [args.detectron2]) + "\n")
        log(f"ready: {venv}")
    except SetupError as e:
        print(f"\n[setup] ERROR: {e}", file=sys.stderr)
        if venv.exists() and not (venv / STAMP_NAME).exists():
            shutil.rmtree(venv, ignore_errors=True)
            print(f"[setup] removed the incomplete {venv}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        shutil.rmtree(venv, ignore_errors=True)
        print(f"\n[setup] interrupted; removed the incomplete {venv}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
