"""Prometheus for tests: a real server scraping graphgate, and readers for what it exports.

`PrometheusServer` runs the real `prometheus` binary (missing: skipped locally, failed in
CI) on a free loopback port, scraping one target every second, and queries its HTTP API.
Its first scrape comes about 6 s after start (service-discovery throttling, no flag to
shorten it in 2.42), so `wait_for` polls for up to 30 s by default.

The other helpers read `/metrics` text and, in gunicorn's multiprocess mode, one worker's
own files in PROMETHEUS_MULTIPROC_DIR (to tell which worker counted what).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.support.binaries import missing
from tests.support.ports import free_port

# One sample: its name and its sorted labels.
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
Series = dict[SeriesKey, float]
Result = list[dict[str, Any]]


def parse_exposition(text: str) -> Series:
    """Every sample of a text exposition, keyed by name and sorted labels."""
    found: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def total(series: Series, name: str, **labels: str) -> float:
    """The sum of `name` over every sample whose labels include `labels` (0 if none)."""
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in series.items()
               if sample == name and wanted <= set(sample_labels))


def worker_files(directory: Path, pid: int) -> list[Path]:
    """One process's files in a PROMETHEUS_MULTIPROC_DIR (`counter_<pid>.db`, …)."""
    return sorted(directory.glob(f"*_{pid}.db"))


def file_pids(directory: Path) -> set[int]:
    """The pids that have written files to a PROMETHEUS_MULTIPROC_DIR."""
    return {int(path.stem.rpartition("_")[2]) for path in directory.glob("*.db")}


def worker_series(directory: Path, pid: int) -> Series:
    """What one process recorded, read from its own files (not the summed /metrics)."""
    found: Series = {}
    files = [str(path) for path in worker_files(directory, pid)]
    for family in MultiProcessCollector.merge(files, accumulate=True):  # type: ignore[no-untyped-call]
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def wait_until_answering(url: str, directory: Path, pids: Iterable[int],
                         timeout_s: float = 30) -> None:
    """Ask GET /readyz on new connections until each of these workers has answered one.

    A worker writes its files when it builds the app, before it accepts connections; a
    test that needs both workers serving waits for this, on a route it does not count.
    """
    wanted = set(pids)
    deadline = time.monotonic() + timeout_s
    counts: dict[int, float] = {}
    with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        while True:
            client.get(url + "/readyz")
            counts = {pid: total(worker_series(directory, pid), "graphgate_http_requests_total",
                                 route="/readyz") for pid in wanted}
            if all(counts.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not every worker answered within {timeout_s} s: {counts}")
            time.sleep(0.05)


class PrometheusServer:
    """The real Prometheus, scraping `target` ("host:port") as job `job`."""

    def __init__(self, target: str, *, job: str = "graphgate", metrics_path: str = "/metrics",
                 scrape_interval: str = "1s") -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            missing("Prometheus (prometheus)")
        assert binary is not None
        self.binary = binary
        self.job = job
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="graphgate-prometheus-"))
        self.config_path = self.dir / "prometheus.yml"
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                       "scrape_timeout": scrape_interval},
            "scrape_configs": [{
                "job_name": job,
                "metrics_path": metrics_path,
                "static_configs": [{"targets": [target]}],
            }],
        }
        # JSON is YAML: no YAML writer needed.
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = self.dir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30) -> PrometheusServer:
        args = [self.binary, f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(self.proc, timeout_s)
        except BaseException:
            self.stop()  # never leave it running when the caller gets no handle to stop it
            raise
        return self

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus was not ready within {timeout_s} s:\n{self.output()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def query(self, promql: str) -> Result:
        """An instant query's results: `[{"metric": {...}, "value": [ts, "12"]}, …]`."""
        response = httpx.get(self.url + "/api/v1/query", params={"query": promql}, timeout=5)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"query {promql!r} failed: {response.status_code} {body}")
        data = body["data"]
        if data["resultType"] != "vector":
            raise AssertionError(f"query {promql!r} gave a {data['resultType']}, not a vector")
        return list(data["result"])

    def targets(self) -> Result:
        response = httpx.get(self.url + "/api/v1/targets", params={"state": "active"}, timeout=5)
        return list(response.json()["data"]["activeTargets"])

    def wait_for(self, promql: str, predicate: Callable[[Result], bool],
                 timeout_s: float = 30) -> Result:
        """Poll `promql` until `predicate(results)` holds; fail with what was last seen."""
        deadline = time.monotonic() + timeout_s
        results: Result = []
        while True:
            results = self.query(promql)
            if predicate(results):
                return results
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)
        targets = [{k: t.get(k) for k in ("scrapeUrl", "health", "lastError", "lastScrape")}
                   for t in self.targets()]
        raise AssertionError(f"{promql!r} never matched within {timeout_s} s; last results: "
                             f"{results}; targets: {targets}\n{self.output()[-2000:]}")


def scalar(results: Result) -> float | None:
    """The value of a one-result query (`sum(...)`), None when there is no result."""
    if not results:
        return None
    assert len(results) == 1, results
    return float(results[0]["value"][1])


def by_label(results: Result, label: str) -> dict[str, float]:
    """A `sum by (label)` query's values keyed by that label."""
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in results}


def has_value(expected: float) -> Callable[[Result], bool]:
    return lambda results: scalar(results) == expected


def labels_equal(label: str, expected: dict[str, float]) -> Callable[[Result], bool]:
    return lambda results: by_label(results, label) == expected


def names(series: Iterable[SeriesKey]) -> set[str]:
    return {name for name, _ in series}
