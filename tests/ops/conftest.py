"""Fixtures of the `ops` suite: one loopback Prefect server per test module (ops_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ops_helpers import LoopbackPrefect


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory) -> Iterator[LoopbackPrefect]:
    server = LoopbackPrefect(tmp_path_factory.mktemp("prefect-server"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
