"""Compiled kernels (built from kernels/*.pyx).

The kernels run on the engine's own thread pool (kernels/_pool.h), whose idle workers poll for
0.1 ms and then sleep. GNU OpenMP is linked for one thing only: bench/bench_pool.py's
comparison, which runs the same jobs as OpenMP regions. For that it gets the wait policy the
kernels had when they ran on OpenMP, read once when libgomp loads: unless OMP_WAIT_POLICY or
GOMP_SPINCOUNT is set, 3,000 polls (about 0.1 ms) instead of GNU OpenMP's 300,000 (about 9 ms
of a core after every region, which a service's own threads then compete with). A process
that loaded libgomp before the engine keeps the policy it was loaded with.
"""
import os

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "3000"
