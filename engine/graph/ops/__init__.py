"""Node plans: one class per operator kind, created once per node when a model loads, one
family a module:

- base: ``Op`` (the interface every plan implements), ``Info``, the attribute kinds, the
  registry ``OPS`` and the single-tensor size cap;
- elementwise: unary activations, Clip, PRelu, binary arithmetic, Sum;
- norm: Softmax, BatchNormalization, LRN, LayerNormalization, GroupNormalization,
  InstanceNormalization, MeanVarianceNormalization;
- linalg: MatMul, Gemm;
- shape: the views (Identity, Flatten, Reshape, Squeeze, Unsqueeze), Transpose, Concat, Split,
  Slice, Gather, Shape, ConstantOfShape, Cast, Expand, Pad;
- conv: Conv, ConvTranspose, DeformConv;
- pool: MaxPool, AveragePool, LpPool (1-D to 3-D), the global pools (GlobalLpPool too),
  MaxUnpool;
- resize: Resize;
- gridsample: GridSample;
- reduce: the Reduce* family, ArgMax, ArgMin, TopK;
- mathops: unary math and activations, Pow, Min, Max, Mean;
- logic: comparisons, boolean logic, Where;
- rearrange: DepthToSpace, SpaceToDepth, Tile, Range, Size, EyeLike, Trilu, CumSum, OneHot;
- einsum: Einsum;
- se: SqueezeExcite, the engine's own node for a squeeze-and-excitation block.

An op is its attributes, ``infer`` and a short step. Elementwise, shape and small tensor
operators are NumPy; the spatial ones run the engine's planned layers, and the arithmetic of
ONNX's semantics that is not graph plumbing lives beside those layers: sizes and pads in
engine/shapes.py, padded pooling's divisors and MaxPool's indices in engine/ops/pool.py,
Resize's coordinate modes in engine/ops/resample.py, the window of a transposed convolution
with pads its layer cannot take in engine/ops/conv_transpose.py.

Importing this package imports every family, so ``OPS`` is complete.
"""
# every family registers its operators when imported
from . import (conv, einsum, elementwise, gridsample, linalg, logic, mathops,  # noqa: F401
               norm, pool, rearrange, reduce, resize, se, shape)
from .base import (F32, I64, MAX_TENSOR_BYTES, OPS, Info, Op, blame, check_tensor_size,
                   register, same_shape_inputs)

__all__ = ["F32", "I64", "MAX_TENSOR_BYTES", "OPS", "Info", "Op", "blame", "check_tensor_size",
           "register", "same_shape_inputs"]
