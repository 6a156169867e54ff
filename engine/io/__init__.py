"""Model files: ONNX import, the native safetensors format, and export from PyTorch."""
from __future__ import annotations

import os

__all__ = ["load", "export"]


def _is_native(path: str) -> bool:
    """safetensors files start with the little-endian u64 length of a JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
        size = os.fstat(f.fileno()).st_size
    if len(head) == 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 0 < n <= size - 8:
            return True
    return path.lower().endswith(".safetensors")


def load(source, *, num_threads=None, wisdom=None, accuracy="fast", max_memory=None,
         base_dir=None, layout="auto", winograd_weights="auto"):
    """engine.load: an ONNX file (its path, its bytes or an onnx.ModelProto) or a native file
    written by Model.save, told apart by content (the suffix only breaks a tie).

    base_dir: for an onnx.ModelProto only, the directory its external data is relative to;
    without it a ModelProto with external data is refused (a file's is read beside the file).

    num_threads: kernel threads for the model's runs (None: engine.set_num_threads).
    max_memory: bytes a plan may make the model hold (its weights, transformed weights and
    values computed while planning, one thread's activation arena, the arrays a run returns);
    None for engine.memory.default_max_memory(), half of the machine's RAM (or of the
    container's limit). A file, or at run time an input shape, whose plan needs more raises
    engine.ModelError naming the largest tensors, before anything that size is allocated.
    ``model.memory()`` reports what a loaded model holds.
    layout: "auto" lets engine/dispatch/layout.py choose which convolutions run in the
    channel-blocked layout (NCHWc); "nchw" or "nchwc" forces one for every convolution
    a blocked kernel can run (for comparing the layouts).
    wisdom: a file written by engine.tune whose measured choices replace the rules' for the
    layers it names; None reads the per-user default file if there is one, False none. A file
    made for another CPU, engine version or thread count, or that does not parse, is ignored
    with a warning (engine.lab.wisdom.WisdomWarning).
    accuracy: "fast" (the rules), or "strict": algorithms whose measured error exceeds
    engine/dispatch/policy.py's STRICT_MAX_REL_ERROR (Winograd F(4x4,3x3)) run no layer.
    winograd_weights: "auto" lets engine/dispatch/winograd.py keep each Winograd layer's
    transformed weights or make them per call (large layers: a few percent of their time for
    a quarter of their memory); "stored" or "per_call" decides for every one."""
    from ..graph import Model
    from ..lab import wisdom as _wisdom
    from ..memory import resolve_max_memory
    from ..dispatch.layout import why_not_layout
    max_memory = resolve_max_memory(max_memory)    # a bad value fails before the file is read
    policy = _wisdom.policy(wisdom, accuracy, num_threads, winograd_weights)
    reason = why_not_layout(layout)
    if reason is not None:
        raise ValueError(reason)
    if isinstance(source, (bytes, bytearray, memoryview)) or (
            hasattr(source, "graph") and hasattr(source, "opset_import")):
        from . import onnx_import
        return Model(onnx_import.load(source, base_dir), num_threads=num_threads,
                     max_memory=max_memory, layout=layout, policy=policy)
    if base_dir is not None:
        raise ValueError("base_dir is for an onnx.ModelProto; a file's external data is read "
                         "from the file's directory")
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    if _is_native(path):
        from . import native
        graph = native.load(path)
    else:
        from . import onnx_import
        graph = onnx_import.load(path)
    return Model(graph, num_threads=num_threads, max_memory=max_memory, layout=layout,
                 policy=policy)


def export(module, example_input, path, *, opset=17, input_names=("input",),
           output_names=("output",)):
    """Export a torch.nn.Module through ONNX (TorchScript exporter, dynamo=False, where that
    keyword exists) to the native file at ``path``; returns the loaded Model. The exported
    graph has the example's shapes (no free dimensions)."""
    import tempfile

    import numpy as np
    import torch
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
                 for a in args)
    kwargs = dict(opset_version=opset, input_names=list(input_names),
                  output_names=list(output_names))
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = os.path.join(tmp, "model.onnx")
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                try:
                    torch.onnx.export(module, args, onnx_path, dynamo=False, **kwargs)
                except TypeError as e:
                    if "dynamo" not in str(e):
                        raise
                    torch.onnx.export(module, args, onnx_path, **kwargs)
        finally:
            module.train(was_training)
        model = load(onnx_path)
    model.save(path)
    return model
