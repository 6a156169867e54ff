"""Compiled kernels (built from kernels/*.pyx).

Most kernels run on the engine's own thread pool (kernels/_pool.h), whose idle workers poll
for 0.1 ms and then sleep. The few still on GNU OpenMP (the direct reference loops, deformable
and separable convolution, the non-finite fix-up, per-call Winograd weights) follow its wait
policy, which it reads once, when it is loaded with the first kernel module. Left to itself,
an idle OpenMP worker polls for work 300,000 times (about 9 ms of a core here) after every
parallel region, and a service's own threads then compete with it after each call. Unless
OMP_WAIT_POLICY or GOMP_SPINCOUNT is set, they run with 3,000 polls (about 0.1 ms), measured
when every kernel ran on OpenMP:
ResNet-50, MobileNetV2, EfficientNet-B0 and SqueezeNet run as fast at 2 threads as with the
default (a passive policy, no polling, costs ResNet-50 20%), and no CPU is burnt after a run
(bench/bench_deploy.py prints the CPU a process uses in the 100 ms after one). A process that
loaded libgomp before the engine keeps the policy it was loaded with.
"""
import os

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "3000"
