"""Builds posenc against the installed torch: `pip install --no-build-isolation .`

The native code is built by CMake (one build serves Python and C++): libposenc (the operators)
and posenc._C (the Python module that loads it) are placed inside the package. CUDA kernels
are compiled when torch has CUDA and nvcc exists; POSENC_CUDA=0/1 forces the choice."""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import torch

        package_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        cuda = os.environ.get("POSENC_CUDA", "AUTO")
        cuda = {"0": "OFF", "1": "ON"}.get(cuda, cuda)
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DPOSENC_PYTHON_PACKAGE_DIR={package_dir}",
            f"-DPOSENC_CUDA={cuda}",
            "-DPOSENC_BUILD_TESTS=OFF",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        subprocess.check_call(configure)
        subprocess.check_call(["cmake", "--build", str(build_dir)])


setup(
    name="posenc",
    version="0.1.0",
    description="Fused positional-encoding operators for PyTorch (CPU and CUDA)",
    packages=["posenc", "posenc.integrations"],
    package_dir={"": "torch_ext"},
    ext_modules=[Extension("posenc._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    # Built and tested against torch 2.14.1 (CI) and 2.11.0 (the full Python suite on the CPU, and
    # the CUDA tests on an H200); the binding is C++20 either way.
    install_requires=["torch>=2.11"],
    python_requires=">=3.9",
    zip_safe=False,
)
