"""Markdown tables from a `python -m bench --json-out` document (for docs/performance.md).

    .venv/bin/python -m bench.report var/bench/latest.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    value = float(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _cell(item: dict[str, Any]) -> str:
    low, high = item["min"], item["max"]
    if low is None or high is None or low == high:
        return _num(item["median"])
    return f"{_num(item['median'])} ({_num(low)} to {_num(high)})"


def markdown(document: dict[str, Any]) -> str:
    figures: list[dict[str, Any]] = document["figures"]
    out: list[str] = []
    sections: dict[str, list[dict[str, Any]]] = {}
    for item in figures:
        sections.setdefault(item["section"], []).append(item)
    for section, items in sections.items():
        rows: list[str] = []
        metrics: list[str] = []
        for item in items:
            if item["row"] not in rows:
                rows.append(item["row"])
            if item["metric"] not in metrics:
                metrics.append(item["metric"])
        by = {(i["row"], i["metric"]): i for i in items}
        out.append(f"\n#### {section}\n")
        # Rows as columns when there are few of them (easier to compare side by side).
        out.append("| figure | " + " | ".join(rows) + " |")
        out.append("| --- |" + " --- |" * len(rows))
        for metric in metrics:
            unit = next((i["unit"] for i in items if i["metric"] == metric), "")
            label = f"{metric} ({unit})" if unit else metric
            cells = [_cell(by[(row, metric)]) if (row, metric) in by else "" for row in rows]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("\n#### targets\n")
    out.append("| target | measured | goal | met |")
    out.append("| --- | --- | --- | --- |")
    for target in document["targets"]:
        measured = target["measured"]
        shown = "-" if measured is None else f"{_num(measured)}{target['unit']}"
        met = "-" if target["met"] is None else ("yes" if target["met"] else "**no**")
        out.append(f"| {target['name']} | {shown} | {target['goal']} | {met} |")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
