"""`svcdoctor redact IN OUT` and `collect --redact`: a bundle safe to share (`collect/redact.py`), and the mapping
that undoes it written next to OUT (never inside it), for the person who redacted it."""

from __future__ import annotations

import os

from svcdoctor.collect.bundle import load_input
from svcdoctor.collect.redact import Pseudonyms, write_redacted
from svcdoctor.errors import UsageError


def redact_bundle(in_path: str, out_path: str) -> tuple[str, str, Pseudonyms]:
    if os.path.abspath(in_path) == os.path.abspath(out_path):
        raise UsageError("OUT must not be IN: the original stays as it is")
    return write_redacted(load_input(in_path), out_path)
