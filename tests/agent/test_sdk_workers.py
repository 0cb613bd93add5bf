"""The conformance scenarios again, against a real two-worker gunicorn on Postgres, with
the SDK's requests spread over both workers: a thread, a run, its cancel, its join and
its reconnect may each reach a different worker than the one running it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.security.api_keys import generate_key
from tests.agent import test_sdk_background as background
from tests.agent import test_sdk_resume as resume
from tests.agent import test_sdk_runs as runs
from tests.agent import test_sdk_threads as threads
from tests.agent.conftest import AgentServer
from tests.security.conftest import KEY_SPECS, Caller, KeyRing, write_keys_file
from tests.support.postgres import PostgresServer
from tests.support.servers import ProcessServer

REPO = Path(__file__).resolve().parents[2]
GRAPHS = ",".join(f"{name}={spec}" for name, spec in {
    "demo": "service.graphs.demo:make_demo_graph", "slow": "tests.support.graphs:slow",
    "failing": "tests.support.graphs:failing", "approval": "tests.support.graphs:approval",
    "nested": "tests.support.graphs:nested"}.items())

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_workers(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory,
                ) -> Iterator[AgentServer]:
    tmp = tmp_path_factory.mktemp("workers")
    callers = {name: Caller(*generate_key(), KEY_SPECS[name][0]) for name in ("alice", "carol")}
    write_keys_file(tmp / "keys.toml", callers, KEY_SPECS)
    server = ProcessServer({
        "PYTHONPATH": str(REPO), "GRAPHGATE_ENV": "production",
        "GRAPHGATE_AUTH__ENABLED": "true", "GRAPHGATE_AUTH__API_KEYS_FILE": str(tmp / "keys.toml"),
        "GRAPHGATE_DATABASE_URL": postgres.create_database(), "GRAPHGATE_GRAPHS": GRAPHS,
        "GRAPHGATE_DEFAULT_GRAPH": "demo",
        # Slow enough that a cut stream's run is still going when the SDK reconnects.
        "GRAPHGATE_DEMO__TOKEN_DELAY_MS": "40", "GRAPHGATE_DEMO__REPLY_TOKENS": "30",
        "GRAPHGATE_LOGGING__ACCESS_LOG": "false",
    }, "--workers", "2", cwd=tmp).start()
    agent = AgentServer(server, KeyRing(tmp / "keys.toml", callers))
    yield agent
    agent.close()
    assert server.stop() == 0, server.output()


SCENARIOS: list[Callable[[AgentServer], None]] = [
    threads.test_create_get_update_delete,
    threads.test_another_owner_sees_nothing,
    threads.test_state_history_and_update_state,
    runs.test_values_stream_starts_with_metadata_and_ends,
    runs.test_second_turn_sees_the_first,
    runs.test_messages_mode_sends_metadata_then_growing_partials,
    runs.test_updates_custom_and_debug_together,
    runs.test_subgraph_events_carry_their_namespace,
    runs.test_interrupt_then_resume_with_command,
    runs.test_a_failing_graph_reports_a_safe_error,
    runs.test_a_second_run_on_a_busy_thread_is_refused,
    background.test_background_run_then_join,
    background.test_join_stream_replays_a_background_run,
    background.test_cancel_a_running_background_run,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__.removeprefix("test_"))
def test_on_two_workers(two_workers: AgentServer, scenario: Callable[[AgentServer], None],
                        ) -> None:
    scenario(two_workers)


def test_cut_stream_resumes_on_two_workers(two_workers: AgentServer) -> None:
    resume.test_sdk_reconnects_after_a_cut_with_nothing_lost_or_repeated(
        lambda **_: two_workers)
