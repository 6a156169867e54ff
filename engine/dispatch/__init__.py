"""Every choice of how to run a layer, one module per kind of choice, each a pure function of
the layer's parameters returning (choice, one-line reason):

- ``conv``: the 2-D convolution algorithm (``choose_conv2d``, ``why_not``, the candidates and
  cost estimates explain() lists);
- ``depthwise``: which depthwise kernel runs a depthwise layer on one input size;
- ``layout``: which convolutions run in the channel-blocked layout (NCHWc), and how the
  blocked kernels split their work between threads;
- ``transposed``: the transposed convolution's algorithm, and whether an ONNX ConvTranspose's
  pads go to the planned layer or to a window copied out of its output;
- ``pool``: whether an ONNX pool runs on the pooling layer directly or on a padded copy;
- ``gemm``: whether an ONNX Gemm runs on the dense kernel (one row), the packed GEMM or
  numpy.matmul, and a MatMul by constant weights on the packed GEMM or numpy.matmul;
- ``resize``: how each axis of an ONNX Resize is resampled (gather, taps, dense product);
- ``winograd``: whether a Winograd layer keeps its transformed weights or makes them per call;
- ``batch``: whether a batch runs whole or as chunks of images, each on its own thread.

A plan asks once and stores the answer, explain() shows it with its reason, and a caller may
force the choices worth comparing: ``algorithm=`` on the planned convolutions, ``kernel=`` on
the depthwise plan (engine.ops.depthwise.Depthwise), ``layout=`` on engine.load and Model.
Thresholds are measured with bench/bench_dispatch.py, which times the choices side by side
around each of them (bench/bench_models.py for the layout's, which only whole models show).
"""
from .conv import (ALGORITHMS, DIRECT_BLOCKED_MAX_IN, DIRECT_BLOCKED_MAX_OUT,
                   DIRECT_BLOCKED_MAX_POINTWISE, DIRECT_BLOCKED_MAX_WINOGRAD,
                   DIRECT_BLOCKED_MIN_WIDTH, DIRECT_BLOCKED_STRIDED_WIDTH,
                   FFT_MAX_SPECTRUM_BYTES, WINOGRAD_MIN_CHANNELS, F43_MIN_CHANNELS_DILATED,
                   ConvParams, choose_conv2d, conv2d_candidates, drop_padding_taps,
                   estimated_ms, fft_spectrum_bytes, why_not)
from .depthwise import DEPTHWISE_KERNELS, choose_depthwise_kernel, why_not_depthwise_kernel
from .gemm import choose_gemm, choose_matmul
from .layout import (BLOCKED_DIRECT_MAX_TAPS, LAYOUTS, blocked_kernel, choose_layout, pays_alone,
                     why_not_layout)
from .pool import choose_pool_path
from .resize import choose_resize_axis_path
from .winograd import (WINOGRAD_MAX_REL_ERROR, choose_winograd_weights, rank_winograd_tiles,
                       tile_cost_ms)
from .transposed import (TRANSPOSE_ALGORITHMS, choose_conv_transpose2d,
                         choose_onnx_transpose_path, why_not_conv_transpose2d)

__all__ = [
    # conv
    "ALGORITHMS", "ConvParams", "choose_conv2d", "why_not", "conv2d_candidates", "estimated_ms",
    "drop_padding_taps",
    "fft_spectrum_bytes", "FFT_MAX_SPECTRUM_BYTES", "WINOGRAD_MIN_CHANNELS",
    "F43_MIN_CHANNELS_DILATED", "DIRECT_BLOCKED_MAX_IN", "DIRECT_BLOCKED_MAX_OUT",
    "DIRECT_BLOCKED_MAX_POINTWISE", "DIRECT_BLOCKED_MAX_WINOGRAD", "DIRECT_BLOCKED_MIN_WIDTH",
    "DIRECT_BLOCKED_STRIDED_WIDTH",
    # winograd
    "choose_winograd_weights", "rank_winograd_tiles", "tile_cost_ms", "WINOGRAD_MAX_REL_ERROR",
    # depthwise
    "DEPTHWISE_KERNELS", "choose_depthwise_kernel", "why_not_depthwise_kernel",
    # layout
    "LAYOUTS", "BLOCKED_DIRECT_MAX_TAPS", "blocked_kernel", "choose_layout", "pays_alone", "why_not_layout",
    # transposed
    "TRANSPOSE_ALGORITHMS", "choose_conv_transpose2d", "why_not_conv_transpose2d",
    "choose_onnx_transpose_path",
    # pool, gemm
    "choose_pool_path", "choose_gemm", "choose_matmul",
]
