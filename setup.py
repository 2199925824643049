"""Build script for mimicfast.

Pure-Python parts install with plain setuptools. The compiled extension ``mimicfast._C``
(pybind11; C++ CPU kernels, CUDA kernels when nvcc is found) is built by CMake + ninja; torch must be
importable at build time (``pip install --no-build-isolation``). Building never breaks installation: when
torch, CMake or a compiler is missing, or the build fails, the pure-Python package installs and
``mimicfast.backends()`` says that the compiled backends are absent.

Environment:
    MIMICFAST_BUILD_EXT=0     skip the compiled extension altogether.
    MIMICFAST_BUILD_CUDA=1/0  force the CUDA kernels on / off (default: on when nvcc is found).
    MIMICFAST_CUDA_ARCH       CUDA architectures in CMake syntax (default "90", i.e. sm_90).
Triton kernels live in the top-level ``kernels/`` folder and install as ``mimicfast.kernels``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _tool(name: str, module: str) -> str | None:
    """Path of a build tool: on PATH, or shipped by its PyPI package (``cmake``, ``ninja``)."""
    found = shutil.which(name)
    if found:
        return found
    try:
        mod = __import__(module)
    except ImportError:
        return None
    bin_dir = getattr(mod, "CMAKE_BIN_DIR", None) or getattr(mod, "BIN_DIR", None)
    candidate = Path(bin_dir, name) if bin_dir else None
    return str(candidate) if candidate and candidate.exists() else None


def _nvcc() -> str | None:
    """nvcc on PATH, under $CUDA_HOME, or at /usr/local/cuda."""
    for candidate in (
        shutil.which("nvcc"),
        os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "nvcc") if os.environ.get("CUDA_HOME") else None,
        "/usr/local/cuda/bin/nvcc",
    ):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def _warn(message: str) -> None:
    print(f"\nWARNING (mimicfast): {message}\n", file=sys.stderr, flush=True)


class CMakeExtension(Extension):
    """An extension whose sources CMake compiles (see CMakeLists.txt)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configures and builds CMakeLists.txt with ninja; on any failure warns and installs without it."""

    def build_extensions(self) -> None:
        for ext in list(self.extensions):
            try:
                self._build(ext)
            except (ImportError, OSError, RuntimeError, subprocess.CalledProcessError) as exc:
                _warn(f"the compiled extension {ext.name} was not built ({exc}); installing the pure-Python package.")
                # Later steps (copy to the source tree for -e, the wheel's file list) must not expect it.
                self.extensions.remove(ext)

    def _build(self, ext: Extension) -> None:
        import pybind11
        import torch.utils

        cmake = _tool("cmake", "cmake")
        if cmake is None:
            raise RuntimeError("cmake not found")
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPython_EXECUTABLE={sys.executable}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        ninja = _tool("ninja", "ninja")
        if ninja is not None:
            args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        cuda = os.environ.get("MIMICFAST_BUILD_CUDA", "auto")
        nvcc = _nvcc()
        if cuda == "1" and nvcc is None:
            raise RuntimeError("MIMICFAST_BUILD_CUDA=1 but nvcc was not found")
        if cuda != "0" and nvcc is not None:
            arch = os.environ.get("MIMICFAST_CUDA_ARCH", "90")
            args += ["-DMIMICFAST_BUILD_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DMIMICFAST_CUDA_ARCH={arch}"]
        else:
            args += ["-DMIMICFAST_BUILD_CUDA=OFF"]
        subprocess.run([cmake, "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        subprocess.run([cmake, "--build", str(build_dir)], check=True)


ext_modules = [] if os.environ.get("MIMICFAST_BUILD_EXT") == "0" else [CMakeExtension("mimicfast._C")]
packages = find_packages(include=["mimicfast", "mimicfast.*"]) + ["mimicfast.kernels"]

setup(
    packages=packages,
    package_dir={"mimicfast.kernels": "kernels"},
    include_package_data=True,
    package_data={"mimicfast": ["weights/*.safetensors", "weights/*.json", "data/*"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": CMakeBuild},
)
