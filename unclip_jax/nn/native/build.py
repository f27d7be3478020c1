"""Builds `_onednn_conv.so`, the oneDNN convolutions of `nn/conv.py`, for this environment.

    python -m unclip_jax.nn.native.build

Needs a C++17 compiler (`c++`, or $CXX) and the `cpu` extra (`onednn-devel-cpu-gomp`: oneDNN's
headers and library, installed under the environment's prefix); XLA's FFI headers come with
jaxlib. Where the compiler or oneDNN is missing it says so and exits 0: the models then use XLA's
convolutions. A failed compile exits 1 with the compiler's message.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax

HERE = Path(__file__).parent
SOURCE = HERE / "onednn_conv.cc"
LIBRARY = HERE / "_onednn_conv.so"


def onednn_prefix() -> Path | None:
    """The prefix holding oneDNN's headers and library (the extra's wheels install there)."""
    for prefix in (Path(sys.prefix), Path(sys.base_prefix)):
        if (prefix / "include" / "dnnl.hpp").exists() and (
            prefix / "lib" / "libdnnl.so.3"
        ).exists():
            return prefix
    return None


def command(compiler: str, prefix: Path) -> list[str]:
    lib = prefix / "lib"
    return [
        compiler,
        "-O3",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-fopenmp",
        "-w",  # XLA's FFI headers warn under GCC
        f"-I{jax.ffi.include_dir()}",
        f"-I{prefix / 'include'}",
        str(SOURCE),
        "-o",
        str(LIBRARY),
        f"-L{lib}",
        "-l:libdnnl.so.3",
        f"-Wl,-rpath,{lib}",
    ]


def main() -> int:
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    prefix = onednn_prefix()
    if compiler is None or prefix is None:
        missing = "C++ compiler (c++ or $CXX)" if compiler is None else "oneDNN (the cpu extra)"
        print(f"oneDNN convolutions not built: {missing} not found; XLA's convolutions are used")
        return 0
    done = subprocess.run(command(compiler, prefix), capture_output=True, text=True)
    if done.returncode != 0:
        print(f"building {LIBRARY.name} failed:\n{done.stderr.strip()}", file=sys.stderr)
        return 1
    print(f"built {LIBRARY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
