"""A smoke test with the official JS SDK (`@langchain/langgraph-sdk` from npm, pinned in
tests/agent/js/package-lock.json): create a thread, stream a run, read it back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.agent.conftest import AgentServer
from tests.support.binaries import missing

JS_DIR = Path(__file__).parent / "js"


def test_js_sdk_streams_a_run(agent: AgentServer, tmp_path: Path) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing("Node.js and npm")
    assert node is not None and npm is not None
    for name in ("package.json", "package-lock.json", "smoke.mjs"):
        shutil.copy(JS_DIR / name, tmp_path / name)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=tmp_path,
                   check=True, capture_output=True, timeout=180)
    env = {**os.environ, "GRAPHGATE_URL": agent.url,
           "GRAPHGATE_KEY": agent.keyring["alice"].key}
    result = subprocess.run([node, "smoke.mjs"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["events"][0] == "metadata" and seen["events"][-1] == "end"
    assert "messages" in seen["events"] and "values" in seen["events"]
    assert "I have seen 1 message" in seen["text"]
    assert seen["lastMessages"] == seen["stateMessages"] == 2
    assert seen["searched"] == [seen["threadId"]]
