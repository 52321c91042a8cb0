"""Faust agents of the pipeline (the worker's stream processing services)."""
