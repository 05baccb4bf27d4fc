"""Moved to `svcdoctor/inputs.py`; kept until `commands/check.py`, `commands/graph.py`, `commands/watch.py` and
their tests import from there."""

from svcdoctor.inputs import InputOptions, LoadedInput, load, read_snapshot  # noqa: F401
