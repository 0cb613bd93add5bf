"""`make bench-smoke`'s code path at tiny sizes: the harness runs every section against
real servers and prints a table and a JSON line of the right shape.

No timing is asserted (the machine is shared); what is asserted is what a correct run
must show whatever the speed: every stream complete with the right number of events,
no failed requests, every row and target present, capacity streams all held open.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SMOKE_TOKENS = 5  # bench.harness.SMOKE.tokens


def _variants() -> tuple[str, ...]:
    """graphgate's one-change rows; the Redis one runs only where redis-server is."""
    redis = ("graphgate redis",) if shutil.which("redis-server") else ()
    return ("graphgate jwt", *redis, "graphgate otel", "graphgate off")


def _has_pg() -> bool:
    return bool(list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))) or bool(
        shutil.which("initdb"))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAPHGATE_")}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--workdir", str(workdir / "work"),
         "--json-out", str(workdir / "out.json")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("section"), lines[0]  # the table comes first
    document: dict[str, Any] = json.loads(lines[-1])  # then exactly one JSON line
    assert json.loads((workdir / "out.json").read_text()) == document
    document["_stdout"] = done.stdout
    return document


def figure(report: dict[str, Any], section: str, row: str, metric: str) -> dict[str, Any]:
    for item in report["figures"]:
        if (item["section"], item["row"], item["metric"]) == (section, row, metric):
            found: dict[str, Any] = item
            return found
    raise AssertionError(f"no figure {section}/{row}/{metric}")


def test_meta_records_the_run(report: dict[str, Any]) -> None:
    """The JSON says what ran: smoke sizes, every section, versions, the machine."""
    meta = report["meta"]
    assert meta["smoke"] is True
    assert meta["sections"] == ["streams", "protections", "capacity", "nginx", "storage",
                                "workers"]
    assert meta["sizes"]["rounds"] >= 3
    assert meta["versions"]["langgraph"] != "absent"
    assert meta["cpus"] >= 1


def test_each_figure_is_a_median_of_its_rounds(report: dict[str, Any]) -> None:
    """Every figure carries its per-round values, with median and spread among them."""
    rounds = report["meta"]["sizes"]["rounds"]
    for item in report["figures"]:
        values = [v for v in item["values"] if v is not None]
        if item["section"] == "capacity":
            continue  # one fresh server per run; the smoke makes one round
        assert len(item["values"]) == rounds, item
        if values:
            assert item["min"] <= item["median"] <= item["max"], item


def test_streams_complete_on_every_server(report: dict[str, Any]) -> None:
    """Every stream ends whole: the bare app sends the tokens and the final empty delta;
    graphgate adds `metadata` and `end` around them."""
    expected = {"bare": SMOKE_TOKENS + 1, "graphgate": SMOKE_TOKENS + 3}
    for row, events in expected.items():
        for concurrency in (1, 10):
            assert figure(report, "streams", row, f"c={concurrency} errors")["max"] == 0
            assert figure(report, "streams", row, f"c={concurrency} events/stream")[
                "median"] == events
            assert figure(report, "streams", row, f"c={concurrency} streams/s")["min"] > 0
            ttfe = figure(report, "streams", row, f"c={concurrency} TTFE p50")["median"]
            total = figure(report, "streams", row, f"c={concurrency} stream p50")["median"]
            assert 0 < ttfe <= total
    for row in _variants():
        assert figure(report, "streams", row, "c=10 errors")["max"] == 0
        assert figure(report, "streams", row, "c=10 events/stream")["median"] == SMOKE_TOKENS + 3


def test_get_rows_answer_every_request(report: dict[str, Any]) -> None:
    for row in ("bare", "graphgate", "graphgate /healthz", *_variants()):
        assert figure(report, "get", row, "GET errors")["max"] == 0, row
        assert figure(report, "get", row, "GET req/s")["min"] > 0, row


def test_protections_measure_every_configuration(report: dict[str, Any]) -> None:
    rows = {item["row"] for item in report["figures"] if item["section"] == "protections"}
    assert {"bare app", "none", "+auth (api key)", "+rate limit (memory)", "+metrics",
            "+access log", "+cors", "+security headers", "+allowed hosts", "all"} <= rows
    assert figure(report, "protections", "all", "GET /healthz CPU")["median"] > 0
    assert figure(report, "protections", "none", "stream (10 tokens) CPU")["median"] > 0


def test_capacity_holds_every_stream(report: dict[str, Any]) -> None:
    sizes = report["meta"]["sizes"]
    for row, count in (("bare", sizes["capacity_round"]), ("graphgate", sizes["capacity"])):
        name = f"{row} K={count}"
        assert figure(report, "capacity", name, "opened")["min"] == count
        assert figure(report, "capacity", name, "alive")["min"] == count
        assert figure(report, "capacity", name, "errors")["max"] == 0
        assert figure(report, "capacity", name, "rss per stream kb")["median"] > 0


@pytest.mark.skipif(not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists(),
                    reason="nginx is not installed")
def test_nginx_row_sees_every_stamped_event(report: dict[str, Any]) -> None:
    """Through the shipped site and directly, every token's server stamp is read back."""
    sizes = report["meta"]["sizes"]
    for row in ("direct", "nginx"):
        assert figure(report, "nginx", row, "errors")["max"] == 0
        stamped = figure(report, "nginx", row, "stamped events")
        assert stamped["min"] == sizes["nginx_streams"] * sizes["nginx_tokens"]
        assert figure(report, "nginx", row, "event delay p50")["median"] > 0


def test_storage_rows_run_turns(report: dict[str, Any]) -> None:
    stores = ["memory", "sqlite"] + (["postgres"] if _has_pg() else [])
    metric = f"c={report['meta']['sizes']['storage_concurrency']} turns"
    for store in stores:
        assert figure(report, "storage", store, f"{metric} errors")["max"] == 0, store
        assert figure(report, "storage", store, f"{metric} streams/s")["min"] > 0, store


def test_workers_rows_and_targets(report: dict[str, Any]) -> None:
    for row in ("1 worker", "2 workers"):
        assert figure(report, "workers", row, "c=10 errors")["max"] == 0
    names = [t["name"] for t in report["targets"]]
    assert any(n.startswith("streams/s c=10: graphgate / bare") for n in names)
    assert any(n.startswith("GET req/s: graphgate / bare") for n in names)
    assert any(n.startswith("nginx: added event delay") for n in names)
    for target in report["targets"]:
        assert set(target) == {"name", "measured", "goal", "met", "unit"}
    assert "target" in report["_stdout"] and "met" in report["_stdout"]
