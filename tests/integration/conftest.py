"""Fixtures of the integration tier that need more than the in-process ``ray_local``.

``ray_head`` is a real Ray head (``ray start --head``) with token authentication, on
free loopback ports, in its own session (``setsid``): what a researcher's laptop
talks to (job submission, a notebook's ``ray.init``). It is independent of
``ray_local``: its own temp dir and ports, and nothing of it enters this process's
environment (``RAY_ADDRESS`` here would make every other test join it). Teardown
stops it by its pid and checks that no process of it is left (see ``_rayhead``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.integration._rayhead import RayHead, start_head, stop_head


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    """A Ray head with token auth on free loopback ports, for the whole session."""
    head, proc = start_head(num_cpus=4)
    try:
        yield head
    finally:
        stop_head(head, proc)
        shutil.rmtree(head.temp_dir, ignore_errors=True)
