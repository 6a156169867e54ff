"""Build the Cython kernels in kernels/ as extension modules ``engine._kernels.<name>``.

Environment switches:
  CONVENGINE_PORTABLE=1   do not tune for the build machine's CPU (no -march=native)
  CONVENGINE_KERNELS=a,b  build only these kernel modules (development convenience)
  CONVENGINE_SANITIZE=address
                          build with AddressSanitizer (-fsanitize=address, -O1, -g, frame
                          pointers) to find out-of-bounds reads and writes in the kernels; the
                          modules then load only with the ASan runtime preloaded, see
                          bench/run_asan.sh. Recorded as SANITIZE in engine/_build_config.py
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_PROBE = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 ? 0 : 1;
}
"""


def _compiler_accepts(flags):
    """Whether the C compiler builds and links a small OpenMP program with ``flags``."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        cmd = cc + flags + [src, "-o", os.path.join(tmp, "probe")]
        try:
            return subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            return False


def _build_flags():
    compile_args = ["-O3", "-fno-strict-aliasing"]
    link_args = []
    sanitize = os.environ.get("CONVENGINE_SANITIZE", "").strip()
    if sanitize not in ("", "address"):
        sys.exit(f"CONVENGINE_SANITIZE={sanitize!r}: only 'address' is supported")
    if sanitize:
        # -O1 rather than -O3: ASan's reports then name the right lines and variables
        compile_args = ["-O1", "-fno-strict-aliasing", "-g", "-fsanitize=address",
                        "-fno-omit-frame-pointer"]
        link_args.append("-fsanitize=address")
    portable = os.environ.get("CONVENGINE_PORTABLE", "") not in ("", "0")
    if not portable and _compiler_accepts(["-march=native", "-fopenmp"]):
        compile_args.append("-march=native")
        # gcc's tuning for several AVX-512 CPUs keeps auto-vectorised loops at 256 bits; the
        # depthwise, pooling and output-step loops run on full vectors only with this
        if _compiler_accepts(["-march=native", "-mprefer-vector-width=512"]):
            compile_args.append("-mprefer-vector-width=512")
    openmp = _compiler_accepts(["-fopenmp"])
    if openmp:
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    else:
        warnings.warn("the C compiler has no OpenMP: bench/bench_pool.py cannot compare the "
                      "kernels' pool with OpenMP regions")
    return compile_args, link_args, openmp, portable, sanitize or None


COMPILE_ARGS, LINK_ARGS, OPENMP, PORTABLE, SANITIZE = _build_flags()


def _extensions():
    wanted = os.environ.get("CONVENGINE_KERNELS", "")
    wanted = {w.strip() for w in wanted.split(",") if w.strip()}
    exts = []
    for path in sorted(glob.glob(os.path.join("kernels", "*.pyx"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if wanted and name not in wanted:
            continue
        exts.append(Extension(
            f"engine._kernels.{name}", [path],
            include_dirs=[numpy.get_include(), "kernels"],
            depends=sorted(glob.glob(os.path.join("kernels", "*.h"))
                           + glob.glob(os.path.join("kernels", "*.pxi"))),
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=COMPILE_ARGS, extra_link_args=LINK_ARGS,
        ))
    return cythonize(
        exts, include_path=["kernels"], language_level=3, quiet=True,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True,
                             "initializedcheck": False, "nonecheck": False},
    )


class BuildExt(build_ext):
    """Builds the kernels, then records what was built in engine/_build_config.py."""

    def run(self):
        super().run()
        text = (
            '"""Written by setup.py at build time: how the kernels were compiled."""\n'
            f"COMPILE_ARGS = {COMPILE_ARGS!r}\n"
            f"LINK_ARGS = {LINK_ARGS!r}\n"
            f"OPENMP = {OPENMP!r}\n"
            f"PORTABLE = {PORTABLE!r}\n"
            f"SANITIZE = {SANITIZE!r}\n"
            f"COMPILER = {(os.environ.get('CC') or sysconfig.get_config_var('CC') or 'cc')!r}\n"
        )
        targets = [os.path.join(self.build_lib, "engine")]
        if self.inplace:
            targets.append("engine")
        for d in targets:
            if os.path.isdir(d):
                with open(os.path.join(d, "_build_config.py"), "w") as f:
                    f.write(text)


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
