"""Shared test configuration: Hypothesis profiles and the pool geometries tests run on.

Profiles (pick one with ``HYPOTHESIS_PROFILE=ci|dev|long``; the default is ``ci`` when the
``CI`` environment variable is set, else ``dev``):

* ``ci``: derandomized and bounded. 60 examples per property; state machines run
  ``stateful_step_count=50`` steps per example (the differential machine asks for 60 and
  checks that at least 2,500 rule steps ran; see ``tests/test_differential.py``).
* ``dev``: Hypothesis defaults (random, with the example database), no deadline.
* ``long``: 5,000 examples of 100 steps, for fuzzing by hand.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from pagebuddy import cli

settings.register_profile(
    "ci",
    max_examples=60,
    stateful_step_count=50,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, stateful_step_count=50)
settings.register_profile(
    "long",
    max_examples=5000,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def _geometry(nr_pages: int, **overrides: Any) -> dict[str, Any]:
    """Constructor keywords for a pool of ``nr_pages`` small (64-byte) pages."""
    return {"nr_pages": nr_pages, "page_size": 64, **overrides}


# Families of pool geometries, each varying one axis of the policy. Every entry is a dict of
# constructor keywords accepted by both Pool and ReferencePool.
GEOMETRY_FAMILIES: dict[str, list[dict[str, Any]]] = {
    # Every size up to 9 pages: single pages, powers of two, one past a power of two.
    "small": [_geometry(n) for n in range(1, 10)],
    # Sizes that are not powers of two, some from pfns that are not aligned to anything.
    "unaligned": [
        _geometry(37, base_pfn=5),
        _geometry(9, base_pfn=37),
        _geometry(70, base_pfn=37),
        _geometry(13, base_pfn=3),
        _geometry(23, base_pfn=1),
        _geometry(65, base_pfn=63),
        _geometry(33, base_pfn=2**64 - 33),
    ],
    # Leading pages left held by construction.
    "reserved": [
        _geometry(8, reserved_pages=3),
        _geometry(16, reserved_pages=5),
        _geometry(37, base_pfn=5, reserved_pages=7),
        _geometry(9, reserved_pages=9),
        _geometry(1, reserved_pages=1),
    ],
    # Caps on the number of orders, from 1 (order 0 only) to the default 11.
    "capped": [_geometry(33, base_pfn=1, max_order=cap) for cap in range(1, 12)],
    # Every zeroing policy with both link stores.
    "zeroing": [
        _geometry(23, base_pfn=1, reserved_pages=2, zero=zero, _links=links)
        for zero in ("free", "alloc", "never")
        for links in ("side", "intrusive")
    ],
    # A real page size.
    "page_size": [
        _geometry(12, page_size=4096, base_pfn=4),
        _geometry(5, page_size=128, _links="intrusive"),
    ],
}


def geometry_id(geometry: dict[str, Any]) -> str:
    """A short readable test id for a geometry."""
    return ",".join(f"{key}={value}" for key, value in geometry.items())


ALL_GEOMETRIES: list[tuple[str, dict[str, Any]]] = [
    (family, geometry) for family, members in GEOMETRY_FAMILIES.items() for geometry in members
]


@pytest.fixture(
    params=ALL_GEOMETRIES,
    ids=[f"{family}:{geometry_id(geometry)}" for family, geometry in ALL_GEOMETRIES],
)
def geometry(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Constructor keywords of one geometry from every family in GEOMETRY_FAMILIES."""
    return dict(request.param[1])


# ------------------------------------------------------------------------- the command line


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``pagebuddy ARGV`` in this process: (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    """Run ``pagebuddy ARGV --json``: (exit code, the JSON object it printed)."""
    code, out, _ = run_main(capsys, *argv, "--json")
    return code, json.loads(out)
