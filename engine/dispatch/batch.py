"""Whether a batch runs whole or as chunks of images, each chunk a plan of its own that runs
on its own thread (engine/graph/runner.py; engine/graph/batch.py proves that the graph treats
images apart).

A chunk keeps its activations in one core's cache and its thread needs no other. Two threads
(bench/bench_batch.py, ms): MobileNetV2 at batch 8 29.1 whole, 27.2 in chunks of two (ONNX
Runtime 29.8), at batch 32 126.3 and 108.5 (125.9); ResNet-50 at batch 8 248.6 and 242.6 in
chunks of one (299.5). Chunks too small pay each step's call overhead (a few microseconds)
once per chunk: a chunk takes enough images for MIN_CHUNK_FLOPS.

The chunk size depends on the batch and the model only, never on the thread count, so a
batch gives the same values at any number of threads (each chunk's plan is the same).
"""
from __future__ import annotations

import math

# Work a chunk takes at least, in FLOPs: a step's call overhead (3-5 us, some 60-150 steps a
# model) stays under 2% of a chunk's time at 100 GFLOP/s. MobileNetV2 (0.6 GFLOP an image)
# runs two images a chunk; chunks of one, two and four ran within 3% of each other
# (bench/bench_batch.py).
MIN_CHUNK_FLOPS = 1e9

# Work a chunk takes at least per byte of the model's weights, which every chunk reads again,
# mostly from memory. AlexNet's 234 MB of classifier weights streamed at 25 GB/s (9.3 ms a
# read) and its convolutions ran at 100-200 GFLOP/s: a byte read costs about the time of 4-8
# FLOPs, and 40 FLOPs a byte keep the reading near a tenth of a chunk's time. At batch 3 in
# chunks of one image (1.4 GFLOP, 244 MB) it took 55 ms against ONNX Runtime's 49, reading the
# classifier three times (bench/bench_batch.py).
MIN_CHUNK_FLOPS_PER_WEIGHT_BYTE = 40.0


def choose_batch_chunk(images: int, flops_per_image: float,
                       weight_bytes: float = 0.0) -> tuple[int, str]:
    """(images a chunk, why) for a batch of ``images`` whose graph treats images apart and
    reads ``weight_bytes`` of weights; a chunk of the whole batch means it runs as one plan.
    The chunks are as even as their count allows."""
    if images < 2:
        return images, "one image"
    flops = max(flops_per_image, 1.0)
    need = max(MIN_CHUNK_FLOPS, MIN_CHUNK_FLOPS_PER_WEIGHT_BYTE * weight_bytes)
    per = max(1, math.ceil(need / flops))
    reason = (f"{flops_per_image / 1e6:.0f} MFLOP an image, {weight_bytes / 2**20:.0f} MiB of "
              f"weights: a chunk takes at least {MIN_CHUNK_FLOPS / 1e9:g} GFLOP and "
              f"{MIN_CHUNK_FLOPS_PER_WEIGHT_BYTE:g} FLOPs a byte of weights, which each chunk "
              f"reads again")
    if per >= images:
        return images, f"the batch is one chunk ({reason})"
    chunks = math.ceil(images / per)
    per = math.ceil(images / chunks)
    return per, (f"{chunks} chunks of {per} image{'s' if per > 1 else ''} ({reason}), each a "
                 f"plan on its own thread")
