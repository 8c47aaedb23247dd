"""The wheels the lent GPU machine lacks, for ``benchmarks/gpu_session.sh`` (docs/gpu.md, "On a GPU").

    make gpu-kit                      # here, where PyPI is reachable: writes .gpu-kit/ (about 12 MB, git-ignored)

The lent machine has torch, accelerate, transformers, huggingface-hub, pandas, pyarrow, scipy, pyyaml, tqdm and
pytest (``DEVICE_HAS``, as the device tool lists them), but not diffusers, pydantic or mlxtend, and it reaches no
registry. The kit holds those (``KIT``) at the versions installed here, which are what CI tests: pure wheels at the
top, pydantic's compiled core once per CPython version in ``cpXY/`` (the session script installs the one for the
Python it finds). The folder is written beside the target and renamed into place: a failed download leaves none.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

KIT = ("diffusers", "importlib_metadata", "lazy_importer", "pydantic", "annotated_types", "typing_inspection",
       "typing_extensions", "mlxtend", "torchmetrics", "lightning_utilities")
COMPILED = ("pydantic_core",)
PYTHONS = ("3.11", "3.12", "3.13")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# What the lent machine's Python has (the device tool's list of 2026-11-17, the names our code and its needs use).
DEVICE_HAS = frozenset({
    "accelerate", "certifi", "charset-normalizer", "contourpy", "cycler", "filelock", "fonttools", "fsspec",
    "hf-xet", "huggingface-hub", "idna", "iniconfig", "jinja2", "joblib", "kiwisolver", "markupsafe", "matplotlib",
    "mpmath", "networkx", "numpy", "packaging", "pandas", "peft", "pillow", "pluggy", "psutil", "pyarrow", "pygments",
    "pyparsing", "pytest", "python-dateutil", "pyyaml", "regex", "requests", "safetensors", "scikit-learn", "scipy",
    "six", "sympy", "threadpoolctl", "tokenizers", "torch", "tqdm", "transformers", "triton", "urllib3", "zipp",
})


def pins(names: tuple[str, ...]) -> list[str]:
    """``name==version`` of each package, as installed in this environment."""
    return [f"{name}=={metadata.version(name)}" for name in names]


class DownloadError(Exception):
    """pip could not download a wheel; the message is pip's last error line."""


def download(specs: list[str], dest: Path, python: str) -> None:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                           "--implementation", "cp", "--python-version", python, *platforms, "-d", str(dest), *specs],
                          capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or ["pip failed"]
        raise DownloadError(errors[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dest", nargs="?", default=".gpu-kit", help="the kit folder (default .gpu-kit)")
    dest = Path(ap.parse_args(argv).dest)
    pure, compiled = pins(KIT), pins(COMPILED)
    specs = pure + compiled
    with tempfile.TemporaryDirectory(prefix=".gpu-kit-", dir=dest.absolute().parent) as tmp:
        try:
            download(pure, Path(tmp), PYTHONS[0])
            for python in PYTHONS:
                download(compiled, Path(tmp) / f"cp{python.replace('.', '')}", python)
        except DownloadError as exc:
            print(f"gpu_kit: {exc}; making the kit needs PyPI (or a PIP_INDEX_URL that has these wheels)",
                  file=sys.stderr)
            return 2
        shutil.rmtree(dest, ignore_errors=True)
        Path(tmp).rename(dest)
        Path(tmp).mkdir()  # for the context manager's clean-up
    size = sum(f.stat().st_size for f in dest.rglob("*.whl")) / 2**20
    print(f"{dest}: {len(list(dest.rglob('*.whl')))} wheels, {size:.1f} MiB ({', '.join(specs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
