"""The team stack (PostgreSQL + S3 API server + ``mlflow server``), one per test session: starting it
costs about 35 s on two cores (MLflow migrates a fresh PostgreSQL database)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.team_stack import TeamStack, postgres_bin


@pytest.fixture(scope="session")
def team_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamStack]:
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/install does it)")
    stack = TeamStack(tmp_path_factory.mktemp("team-stack")).start()
    yield stack
    stack.stop()


@pytest.fixture
def team(team_stack: TeamStack) -> TeamStack:
    """The session's stack, its MLflow server running (restarted if a test left it down)."""
    if not team_stack.mlflow.healthy(timeout=2.0):
        team_stack.mlflow.restart(timeout=120)
    return team_stack
