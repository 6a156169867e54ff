"""Exceptions raised for bad input."""


class ModelError(ValueError):
    """A model file or graph that cannot be loaded or run: names the node or field at fault."""
