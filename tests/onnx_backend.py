"""An onnx.backend.base.Backend running models with engine.load, for ONNX's own node tests.

The cases run as ONNX ships them: weights given as graph inputs take the engine's run-time
weight path, and inputs that decide shapes (Reshape's shape, Resize's sizes, a Clip's bounds)
are planned per value. The one exception is Dropout, whose ``ratio`` and ``training_mode``
the importer must see as constants (it turns an inference Dropout into Identity):
``PARAMETER_INPUTS`` lists them, and the adapter makes those inputs initializers holding the
values given at run time before loading.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep

import engine

PARAMETER_INPUTS = {
    "Dropout": (1, 2),
}


def parameter_inputs(model: onnx.ModelProto) -> set:
    """Graph inputs that some node reads as a parameter."""
    names = set()
    for node in model.graph.node:
        for k in PARAMETER_INPUTS.get(node.op_type, ()):
            if k < len(node.input) and node.input[k]:
                names.add(node.input[k])
    graph_inputs = {vi.name for vi in model.graph.input}
    return names & graph_inputs


def bind_parameters(model: onnx.ModelProto, values: dict) -> onnx.ModelProto:
    """A copy of ``model`` whose inputs named in ``values`` are initializers instead."""
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    keep = [vi for vi in bound.graph.input if vi.name not in values]
    del bound.graph.input[:]
    bound.graph.input.extend(keep)
    for name, value in values.items():
        bound.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return bound


class EngineRep(BackendRep):
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.parameters = parameter_inputs(model)
        initializers = {t.name for t in model.graph.initializer}
        self.input_names = [vi.name for vi in model.graph.input if vi.name not in initializers]
        self.output_names = [vi.name for vi in model.graph.output]

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            feeds = dict(zip(self.input_names, inputs))
        feeds = {k: numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v
                 for k, v in feeds.items()}
        params = {k: feeds.pop(k) for k in list(feeds) if k in self.parameters}
        model = engine.load(bind_parameters(self.model, params) if params else self.model)
        outs = model.run(feeds)
        return [outs[name] for name in self.output_names]


class EngineBackend(Backend):
    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        super().prepare(model, device, **kwargs)
        return EngineRep(model)

    @classmethod
    def run_model(cls, model, inputs, device="CPU", **kwargs):
        return cls.prepare(model, device).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device in ("CPU", "cpu")
