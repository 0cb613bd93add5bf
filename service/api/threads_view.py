"""How thread state snapshots look on the wire."""

from __future__ import annotations

from typing import Any

from langgraph.types import StateSnapshot


def snapshot_payload(snapshot: StateSnapshot) -> dict[str, Any]:
    configurable = (snapshot.config or {}).get("configurable", {})
    parent = (snapshot.parent_config or {}).get("configurable", {})
    return {
        "values": snapshot.values,
        "next": list(snapshot.next),
        "checkpoint_id": configurable.get("checkpoint_id"),
        "parent_checkpoint_id": parent.get("checkpoint_id"),
        "created_at": snapshot.created_at,
        "metadata": snapshot.metadata,
        # A task's error is exception text: only whether it failed is shown.
        "tasks": [
            {
                "id": task.id,
                "name": task.name,
                "failed": task.error is not None,
                "interrupts": [{"id": i.id, "value": i.value} for i in task.interrupts],
            }
            for task in snapshot.tasks
        ],
        "interrupts": [{"id": i.id, "value": i.value} for i in snapshot.interrupts],
    }
