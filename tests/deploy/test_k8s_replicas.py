"""deploy/k8s: two production pods, simulated on this machine, sharing Postgres and Redis.

Each replica is one `Pod` of the production overlay (tests/support/k8s.py): its own
volumes (the ConfigMap's TOML, the Secret files, its own emptyDirs), its environment,
its init containers (`check-config`, `migrate`) and then its container's command
(`graphgate serve`: gunicorn with the config's two workers). Against a pod only the
addresses differ: the Secret files point at the suite's throwaway Postgres and Redis,
and each process binds its own loopback ports (a pod has its own network namespace; two
processes here do not). The test graph `slow` is served next to the demo, as an image
built on graphgate's would add its own graphs.

Requests carry the Ingress's host name, as ingress-nginx forwards them, and a real API
key from the keys Secret. What "any replica serves any request" needs is checked
through both: a conversation continues on the other replica, a key's rate limit holds
across them, a thread busy on one is refused on the other, and the Agent Server
protocol's threads are shared too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis

from service.security.api_keys import generate_key
from tests.security.conftest import Caller, write_keys_file
from tests.support.k8s import Pod, Resource, config, one
from tests.support.ports import free_port
from tests.support.postgres import PostgresServer
from tests.support.redis import RedisServer
from tests.support.sse import iter_frames, wait_for_stage

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

TARGET = "overlays/production"
GRAPHS = "demo=service.graphs.demo:make_demo_graph,slow=tests.support.graphs:slow"
PROBLEM = "application/problem+json"
# An address from kind's pod network: what the kubelet and Prometheus put in Host.
POD_IP = "10.244.1.7"
# name: (tenant, scopes, rate_limit, expires_at), as tests/security/conftest.py writes them
KEY_SPECS: dict[str, tuple[str, list[str], str | None, str | None]] = {
    "acme": ("acme", ["*"], None, None),
    "limited": ("acme", ["*"], "4/minute", None),
    "globex": ("globex", ["*"], None, None),
}


class Replica:
    """One pod's server container as a process, after its init containers succeeded."""

    def __init__(self, pod: Pod, name: str, ports: tuple[int, int]) -> None:
        self.pod, self.name = pod, name
        self.port, self.metrics_port = ports
        # The only settings that differ from the pod's: the bind address and ports, and
        # the graphs. Everything else comes from the ConfigMap and the Secret files.
        self.env = {**pod.env(), "GRAPHGATE_SERVER__HOST": "127.0.0.1",
                    "GRAPHGATE_SERVER__PORT": str(self.port),
                    "GRAPHGATE_METRICS__PORT": str(self.metrics_port),
                    "GRAPHGATE_GRAPHS": GRAPHS}
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"
        self.log_path = pod.root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def init(self) -> None:
        """The init containers, in order; each must succeed, as the kubelet requires."""
        for container in self.pod.init_containers():
            result = subprocess.run(self.pod.argv(container), env=self.env, cwd=self.pod.root,
                                    capture_output=True, text=True, timeout=120, check=False)
            assert result.returncode == 0, (
                f"{self.name}: init container {container['name']} failed:\n"
                f"{result.stdout}{result.stderr}")

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            # Its own session, so teardown can reach gunicorn's workers if the master hangs.
            self.proc = subprocess.Popen(self.pod.argv(self.pod.server), env=self.env,
                                         cwd=self.pod.root, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait_started(self) -> None:
        """The startup probe: its path answers 200 (by pod IP, as the kubelet asks), within
        the probe's own budget."""
        assert self.proc is not None
        probe = self.pod.server["startupProbe"]
        budget = probe["periodSeconds"] * probe["failureThreshold"]
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.output()}")
            try:
                if httpx.get(self.url + probe["httpGet"]["path"], headers=by_ip(self.port),
                             timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not start in {budget} s:\n"
                           f"{self.output()}")

    def stop(self) -> int | None:
        """SIGTERM, as the kubelet sends after preStop; SIGKILL to the group at the grace
        period's end."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(55)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Cluster:
    a: Replica
    b: Replica
    host: str  # the Ingress's host name
    keys: dict[str, Caller]
    metrics_token: str
    redis_url: str

    def client(self, replica: Replica, key: str = "acme") -> httpx.Client:
        """A client as ingress-nginx forwards it: the public host name, the caller's key."""
        return httpx.Client(base_url=replica.url, timeout=30,
                            headers={"Host": self.host, "X-API-Key": self.keys[key].key})


def by_ip(port: int) -> dict[str, str]:
    return {"Host": f"{POD_IP}:{port}"}


def distinct_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def ingress_host(docs: list[Resource]) -> str:
    rules = one(docs, "Ingress", "graphgate")["spec"]["rules"]
    host: str = rules[0]["host"]
    return host


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer,
            redis_server: RedisServer) -> Iterator[Cluster]:
    # What the redis_url fixture does, once for the module: Redis running and empty.
    redis_server.start()
    redis_server.flush()
    keys = {name: Caller(*generate_key(), tenant) for name, (tenant, *_) in KEY_SPECS.items()}
    root = tmp_path_factory.mktemp("replicas")
    keys_file = root / "keys.toml"
    write_keys_file(keys_file, keys, KEY_SPECS)
    token = uuid.uuid4().hex + uuid.uuid4().hex
    # The Secrets both pods mount: one database, one Redis, one keys file, one token.
    secrets = {"database_url": postgres.create_database(),
               "rate_limit__storage_uri": redis_server.url,
               "metrics__token": token, "keys.toml": keys_file.read_text()}
    ports = distinct_ports(4)
    replicas = []
    for name, pair in (("pod-a", (ports[0], ports[1])), ("pod-b", (ports[2], ports[3]))):
        (root / name).mkdir()
        replicas.append(Replica(Pod(TARGET, root / name, secrets), name, pair))
    try:
        for replica in replicas:
            replica.init()
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_started()
        a, b = replicas
        yield Cluster(a, b, ingress_host(a.pod.docs), keys, token, redis_server.url)
    finally:
        codes = {replica.name: replica.stop() for replica in replicas}
    # gunicorn drains on SIGTERM and exits 0, as the kubelet expects of a pod.
    assert set(codes.values()) <= {0, None}, (codes, [r.output() for r in replicas])


def reply(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    text: str = response.json()["reply"]
    return text


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["code"] == code


def test_the_replicas_run_the_production_config(cluster: Cluster) -> None:
    """Two processes, each on its own ports, both ready on the shared Postgres; the
    metrics listener and the Host check behave as the probes and Prometheus need."""
    a, b = cluster.a, cluster.b
    assert a.proc is not None and b.proc is not None and a.proc.pid != b.proc.pid
    assert len({a.port, a.metrics_port, b.port, b.metrics_port}) == 4
    settings = config(a.pod.docs)
    assert settings["server"]["workers"] == 2 and settings["env"] == "production"
    assert cluster.host in settings["http"]["allowed_hosts"]
    for replica in (a, b):
        ready = httpx.get(replica.url + "/readyz", headers=by_ip(replica.port), timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["storage"] == "postgres"
        # Prometheus scrapes the pod's IP with the token; the API port never serves it.
        scrape = httpx.get(replica.metrics_url + "/metrics", timeout=10,
                           headers={**by_ip(replica.metrics_port),
                                    "Authorization": f"Bearer {cluster.metrics_token}"})
        assert scrape.status_code == 200 and "graphgate_" in scrape.text
        unauthorized = httpx.get(replica.metrics_url + "/metrics",
                                 headers=by_ip(replica.metrics_port), timeout=10)
        assert unauthorized.status_code == 401
        with cluster.client(replica) as client:
            assert client.get("/metrics").status_code == 404
            assert client.get("/v1/threads").status_code == 200
            # By pod IP, everything but the probes is refused: only the Ingress's name.
            assert_problem(client.get("/v1/threads", headers=by_ip(replica.port)), 400,
                           "invalid_host")
            anonymous = httpx.get(replica.url + "/v1/threads",
                                  headers={"Host": cluster.host}, timeout=10)
            assert anonymous.status_code == 401


def test_a_conversation_continues_on_the_other_replica(cluster: Cluster) -> None:
    thread = f"conv-{uuid.uuid4().hex[:8]}"
    with cluster.client(cluster.a) as a, cluster.client(cluster.b) as b:
        first = reply(a.post("/v1/chat", json={"message": "hello from A", "thread_id": thread}))
        assert first.startswith("I have seen 1 message")
        second = reply(b.post("/v1/chat", json={"message": "and B?", "thread_id": thread}))
        assert second.startswith("I have seen 3 messages")
        # Either replica reads the whole thread back.
        for client in (a, b):
            state = client.get(f"/v1/threads/{thread}/state")
            assert state.status_code == 200, state.text
            messages = state.json()["values"]["messages"]
            assert [m["content"] for m in messages if m["type"] == "human"] == [
                "hello from A", "and B?"]
            assert len(messages) == 4
    # Another tenant's key sees no such thread on either replica.
    for replica in (cluster.a, cluster.b):
        with cluster.client(replica, "globex") as other:
            assert other.get(f"/v1/threads/{thread}/state").status_code == 404


def test_a_rate_limit_holds_across_both(cluster: Cluster) -> None:
    """The key's own 4/minute is four requests in total, whichever replica (and worker)
    answers: the fifth and later are 429 on both. Another key is unaffected."""
    limited = cluster.keys["limited"]
    with cluster.client(cluster.a, "limited") as a, cluster.client(cluster.b, "limited") as b:
        passed = [client.get("/v1/threads") for client in (a, b, a, b)]
        assert [r.status_code for r in passed] == [200, 200, 200, 200]
        assert [r.headers["x-ratelimit-remaining"] for r in passed] == ["3", "2", "1", "0"]
        assert {r.headers["x-ratelimit-limit"] for r in passed} == {"4"}
        for client in (a, b, a, b):
            refused = client.get("/v1/threads")
            assert_problem(refused, 429, "rate_limited")
            assert int(refused.headers["retry-after"]) >= 1
        assert_problem(b.post("/v1/chat", json={"message": "hi", "thread_id": "rl"}), 429,
                       "rate_limited")
    for replica in (cluster.a, cluster.b):
        with cluster.client(replica, "globex") as other:
            answers = [other.get("/v1/threads") for _ in range(5)]
            assert [r.status_code for r in answers] == [200] * 5
            assert {r.headers["x-ratelimit-limit"] for r in answers} != {"4"}
    # The count lives in Redis, under the key's id (never the key itself).
    with redis.Redis.from_url(cluster.redis_url) as client:
        names = [name.decode() for name in client.keys("*")]
    assert any(limited.key_id in name for name in names), names
    assert not any(limited.key in name for name in names)


def test_a_thread_busy_on_one_replica_is_refused_on_the_other(cluster: Cluster) -> None:
    thread = f"busy-{uuid.uuid4().hex[:8]}"
    with cluster.client(cluster.a) as a, cluster.client(cluster.b) as b:
        body = {"input": {}, "graph": "slow", "thread_id": thread, "stream_mode": "custom"}
        with a.stream("POST", "/v1/chat/stream", json=body) as response:
            assert response.status_code == 200, response.read()
            frames = iter_frames(response)
            wait_for_stage(frames, "b-started")  # mid-run: A holds the thread's lease
            for refused in (
                    b.post("/v1/chat", json={"message": "me too", "thread_id": thread,
                                             "graph": "demo"}),
                    b.post("/v1/chat/stream", json={"message": "me too", "thread_id": thread,
                                                    "graph": "demo"}),
                    b.delete(f"/v1/threads/{thread}")):
                assert_problem(refused, 409, "thread_busy")
                assert refused.headers["retry-after"]
            other = b.post("/v1/chat", json={"message": "elsewhere",
                                             "thread_id": f"{thread}-other"})
            assert reply(other).startswith("I have seen 1 message")
        # What A's run finished is in Postgres, for B to read.
        state = b.get(f"/v1/threads/{thread}/state").json()
        assert state["values"]["steps"] == ["a"] and state["next"] == ["b"], state
        # The disconnect cancels the run on A, which releases the lease in Postgres; B
        # may then run on the thread. (A bound on the wait, not a timing assertion; the
        # pauses grow so that retries stay well inside the key's run limit.)
        deadline, pause = time.monotonic() + 15, 0.1
        while True:
            again = b.post("/v1/chat", json={"message": "now", "thread_id": thread,
                                             "graph": "demo"})
            if again.status_code != 409 or time.monotonic() > deadline:
                break
            assert again.json()["code"] == "thread_busy"
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
        assert reply(again).startswith("I have seen 1 message")
        state = a.get(f"/v1/threads/{thread}/state").json()
        assert state["values"]["messages"][0]["content"] == "now"
        assert state["metadata"]["graph_id"] == "demo"


def test_agent_protocol_threads_are_shared(cluster: Cluster) -> None:
    """POST /threads on A, GET /threads/{id} on B; a run on B, the state on A."""
    thread = str(uuid.uuid4())
    with cluster.client(cluster.a) as a, cluster.client(cluster.b) as b:
        created = a.post("/threads", json={"thread_id": thread,
                                           "metadata": {"created_on": "pod-a"}})
        assert created.status_code == 200, created.text
        seen = b.get(f"/threads/{thread}")
        assert seen.status_code == 200, seen.text
        assert seen.json()["thread_id"] == thread
        assert seen.json()["metadata"]["created_on"] == "pod-a"
        assert_problem(b.post("/threads", json={"thread_id": thread}), 409, "thread_exists")
        ran = b.post(f"/threads/{thread}/runs/wait", json={
            "assistant_id": "demo",
            "input": {"messages": [{"role": "user", "content": "hi from B"}]}})
        assert ran.status_code == 200, ran.text
        state = a.get(f"/threads/{thread}/state")
        assert state.status_code == 200, state.text
        contents = [m["content"] for m in state.json()["values"]["messages"]]
        assert contents[0] == "hi from B"
        assert contents[-1].startswith("I have seen 1 message")
    with cluster.client(cluster.b, "globex") as other:
        assert other.get(f"/threads/{thread}").status_code == 404
