"""Model files: ONNX import, the native safetensors format, and export from PyTorch."""
from __future__ import annotations

import os
import tempfile

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


def load(source, *, num_threads=None):
    """engine.load: an ONNX file (or onnx.ModelProto) or a native file written by
    Model.save, told apart by content (the suffix only breaks a tie)."""
    from ..graph import Model
    if hasattr(source, "graph") and hasattr(source, "opset_import"):
        from . import onnx_import
        return Model(onnx_import.load(source), num_threads=num_threads)
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    if _is_native(path):
        from . import native
        graph = native.load(path)
    else:
        from . import onnx_import
        graph = onnx_import.load(path)
    return Model(graph, num_threads=num_threads)


def export(module, example_input, path, *, opset=17, input_names=("input",),
           output_names=("output",)):
    """Export a torch.nn.Module through ONNX (TorchScript exporter, dynamo=False, where that
    keyword exists) to the native file at ``path``; returns the loaded Model. The exported
    graph has the example's shapes (no free dimensions)."""
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
