"""Bundled model and data."""
