"""Build script for mimicfast.

Pure-Python parts install with plain setuptools. The compiled extension ``mimicfast._C``
(pybind11; C++ CPU kernels, CUDA kernels when nvcc is found) is built by CMake + ninja.
Triton kernels live in the top-level ``kernels/`` folder and install as ``mimicfast.kernels``.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["mimicfast", "mimicfast.*"]) + ["mimicfast.kernels"]

setup(
    packages=packages,
    package_dir={"mimicfast.kernels": "kernels"},
    include_package_data=True,
    package_data={"mimicfast": ["weights/*.safetensors", "weights/*.json", "data/*"]},
)
