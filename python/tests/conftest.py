"""Shared fixtures: the CLI binary (for digest comparisons)."""

import os
import pathlib
import shutil

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cli():
    """The `neurograph` binary: $NEUROGRAPH_BIN, else the repository's release or
    debug build, else one on PATH. A missing binary fails the test (CI builds it)."""
    candidates = [os.environ.get("NEUROGRAPH_BIN")]
    candidates += [str(REPO / "target" / p / "neurograph") for p in ("release", "debug")]
    candidates.append(shutil.which("neurograph"))
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    pytest.fail("no neurograph binary: build it with `cargo build --release` or set NEUROGRAPH_BIN")
