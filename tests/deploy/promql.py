"""What the deploy files may name: the metrics graphgate exports, and PromQL's metric names.

`exported_names()` builds `Metrics` on a fresh registry and lists the sample names
/metrics serves, so a renamed metric breaks the dashboard and rules tests, not a pager at
night. `metric_names(expr)` reads the metric names out of a PromQL expression with a
small tokenizer: label matchers, `by (...)` lists, ranges, strings, functions and
keywords are not metric names. Grafana variables (`$job`, `${datasource}`,
`$__rate_interval`) are skipped, so dashboard queries can be read as they are.
"""

from __future__ import annotations

import re
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from service.observability.metrics import Metrics
from tests.support.binaries import missing

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
RULES = PROMETHEUS_DIR / "graphgate-rules.yml"
RULES_TESTS = PROMETHEUS_DIR / "graphgate-rules.test.yml"
EXAMPLE_CONFIG = PROMETHEUS_DIR / "prometheus.example.yml"
DASHBOARD = GRAFANA_DIR / "graphgate-dashboard.json"

# Written by Prometheus itself for every target: fine to query.
PROMETHEUS_SERIES = frozenset({"up"})

_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}


@cache
def exported_names() -> frozenset[str]:
    """Every sample name graphgate's /metrics can serve, in any mode.

    `_created` series are left out: multiprocess mode (gunicorn) does not export them.
    Process and platform collectors are left out too: single-process mode only.
    """
    registry = CollectorRegistry()
    Metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        assert family.type in _SUFFIXES, f"{family.name}: add {family.type} to _SUFFIXES"
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return frozenset(names)


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        missing("Prometheus (promtool)")
    assert found is not None
    return found


def load_rules() -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return rules


def all_rules() -> list[dict[str, Any]]:
    return [rule for group in load_rules()["groups"] for rule in group["rules"]]


def recording_rule_names() -> frozenset[str]:
    return frozenset(rule["record"] for rule in all_rules() if "record" in rule)


_TOKEN = re.compile(
    r"""
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<comment>\#[^\n]*)
    | (?P<variable>\$\{[^}]*\}|\$\w+|\[\[\w+\]\])
    | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?!\w))
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![\w:]))
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@:])
    | (?P<space>\s+)
    """,
    re.VERBOSE,
)
# Followed by a parenthesised list of label names, never metric names.
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
                       *_LABEL_LISTS})


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[position:position + 20]!r}: {expr}")
        kind = match.lastgroup
        assert kind is not None
        if kind not in {"space", "comment"}:
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


def _skip_to(tokens: list[tuple[str, str]], start: int, closing: str) -> int:
    """The index just past the `closing` that ends the bracket at `start`."""
    opening = tokens[start][1]
    depth = 0
    for index in range(start, len(tokens)):
        if tokens[index] == ("op", opening):
            depth += 1
        elif tokens[index] == ("op", closing):
            depth -= 1
            if depth == 0:
                return index + 1
    raise ValueError(f"unbalanced {opening!r}")


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects (`__name__="..."` matchers included)."""
    tokens = _tokens(expr)
    names: set[str] = set()
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else ("", "")
        if (kind, text) == ("op", "{"):
            end = _skip_to(tokens, index, "}")
            matchers = tokens[index + 1:end - 1]
            for position, (matcher_kind, label) in enumerate(matchers):
                if matcher_kind == "ident" and label == "__name__":
                    operator, value = matchers[position + 1], matchers[position + 2]
                    if operator != ("op", "=") or value[0] != "string":
                        raise ValueError(f"cannot check a regex or negated __name__: {expr}")
                    names.add(value[1][1:-1])
            index = end
        elif (kind, text) == ("op", "["):
            index = _skip_to(tokens, index, "]")
        elif kind == "ident" and text in _LABEL_LISTS and following == ("op", "("):
            index = _skip_to(tokens, index + 1, ")")
        elif kind == "ident" and (following == ("op", "(")
                                  or following in {("ident", "by"), ("ident", "without")}):
            index += 1  # a function, or an aggregation (`sum by (job) (...)` too)
        elif kind == "ident" and text.lower() not in _KEYWORDS:
            names.add(text)
            index += 1
        else:
            index += 1
    return names
