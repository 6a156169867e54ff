#!/usr/bin/env bash
# Builds the kernels with AddressSanitizer (CONVENGINE_SANITIZE=address, see setup.py) in a copy
# of this tree and runs the kernel tests under it, one pytest process per test file, so that an
# ASan finding (which aborts its process, with ASan's report and the Python traceback naming the
# test) does not hide the findings of the other files. The work tree itself is not touched.
#
#   bench/run_asan.sh [pytest args...]           e.g. bench/run_asan.sh -x -k winograd
#   ASAN_DIR=/tmp/asan bench/run_asan.sh          build in (and keep) this directory; a second
#                                                 run there rebuilds only what changed
#   PYTHON=/path/to/python bench/run_asan.sh      default: the python on PATH (activate the venv)
#
# The temporary directory is removed after a clean run and kept after a failure: ASan's reports
# name lines of the generated kernels/*.c there, which quote the .pyx line above each statement.
# Needs gcc's libasan (Debian: libasan8, installed with gcc). Exits non-zero if any file failed.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python}
if [[ -n "${ASAN_DIR:-}" ]]; then
    dir=$ASAN_DIR; mkdir -p "$dir"
else
    dir=$(mktemp -d /tmp/convengine-asan.XXXXXX); tmp=1
fi

# the tree as it is (uncommitted changes included), without build outputs
tar -C "$src" -cf - --exclude=./.git --exclude=./build --exclude='*.so' --exclude='./kernels/*.c' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=./engine/_build_config.py . \
    | tar -C "$dir" -xf -
cd "$dir"
echo "== building with AddressSanitizer in $dir"
CONVENGINE_SANITIZE=address "$py" setup.py -q build_ext --inplace -j 2 > build_asan.log 2>&1 \
    || { tail -n 40 build_asan.log; exit 1; }

# the ASan runtime must be loaded before the interpreter, and libstdc++ with it, or ASan's
# __cxa_throw interceptor aborts the first C++ exception (torch's); leak checking is off because
# CPython does not free everything at exit; PYTHONMALLOC=malloc puts Python's objects under ASan
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:print_legend=0}
export PYTHONMALLOC=malloc PYTHONPATH=$dir

files=(test_conv2d.py test_convnd.py test_depthwise.py test_winograd.py test_pool.py
       test_conv_transpose.py test_deform.py test_resample.py test_separable_fft_octave.py
       test_direct_blocked.py test_nchwc.py test_shapes.py test_index_safety.py
       test_activation_kernels.py test_squeeze_excite.py test_ops_norm.py
       test_nchwc_dense.py test_matmul_bias.py test_dilation_past_map.py)
failed=()
for f in "${files[@]}"; do
    [[ -f tests/$f ]] || continue
    echo "== tests/$f"
    # --capture=sys: pytest would capture ASan's report on fd 2 and lose it in the abort
    rc=0; "$py" -m pytest -q -p no:cacheprovider --capture=sys "tests/$f" "$@" || rc=$?
    (( rc == 0 || rc == 5 )) || failed+=("$f")    # 5: -k selected nothing in this file
done
if (( ${#failed[@]} )); then
    echo "== failed under ASan: ${failed[*]} (build kept in $dir)"; exit 1
fi
echo "== all kernel tests passed under ASan"
[[ -z "${tmp:-}" ]] || rm -rf "$dir"
