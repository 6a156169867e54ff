"""The graph runner: IR, load-time passes, per-shape plans, and the Model that runs them."""
from . import ops  # noqa: F401  (registers every operator's plan class)
from .ir import Graph, Node, TensorSpec
from .runner import Model

__all__ = ["Graph", "Node", "TensorSpec", "Model"]
