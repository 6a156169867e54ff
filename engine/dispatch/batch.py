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


def choose_batch_chunk(images: int, flops_per_image: float) -> tuple[int, str]:
    """(images a chunk, why) for a batch of ``images`` whose graph treats images apart; a
    chunk of the whole batch means it runs as one plan."""
    if images < 2:
        return images, "one image"
    per = max(1, math.ceil(MIN_CHUNK_FLOPS / max(flops_per_image, 1.0)))
    if per >= images:
        return images, (f"{flops_per_image / 1e6:.0f} MFLOP an image: the batch is one chunk "
                        f"of at least {MIN_CHUNK_FLOPS / 1e9:g} GFLOP")
    chunks = math.ceil(images / per)
    return per, (f"{chunks} chunks of {per} image{'s' if per > 1 else ''} "
                 f"({flops_per_image / 1e6:.0f} MFLOP an image, at least "
                 f"{MIN_CHUNK_FLOPS / 1e9:g} GFLOP a chunk), each a plan on its own thread")
