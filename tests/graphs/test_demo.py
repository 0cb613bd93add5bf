"""The offline demo graph: token streaming, conversation awareness, tool calls, progress."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.pregel import Pregel

from service.graphs.demo import make_demo_graph
from service.settings import Settings


def demo_graph() -> Pregel[Any, Any, Any, Any]:
    settings = Settings(
        env="development",
        database_url="memory:",
        demo={"token_delay_ms": 0, "reply_tokens": 12},
    )
    return make_demo_graph(settings).compile(checkpointer=InMemorySaver())


def config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


def user(text: str) -> dict[str, Any]:
    return {"messages": [HumanMessage(text)]}


async def stream_messages(
    graph: Pregel[Any, Any, Any, Any], text: str, thread_id: str
) -> list[tuple[Any, dict[str, Any]]]:
    return [
        (chunk, metadata)
        async for chunk, metadata in graph.astream(
            user(text), config(thread_id), stream_mode="messages"
        )
    ]


async def final_messages(graph: Pregel[Any, Any, Any, Any], thread_id: str) -> list[Any]:
    state = await graph.aget_state(config(thread_id))
    return list(state.values["messages"])


def seen_count(text: str) -> int:
    match = re.search(r"I have seen (\d+) messages? in this conversation", text)
    assert match is not None, text
    return int(match.group(1))


def test_token_deltas_concatenate_to_the_final_reply() -> None:
    """`messages` mode streams several AIMessageChunk deltas that join into the final reply."""

    async def scenario() -> tuple[list[tuple[Any, dict[str, Any]]], list[Any]]:
        graph = demo_graph()
        streamed = await stream_messages(graph, "hello", "t-1")
        return streamed, await final_messages(graph, "t-1")

    streamed, messages = asyncio.run(scenario())
    chunks = [chunk for chunk, _ in streamed]
    assert all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    assert {metadata["langgraph_node"] for _, metadata in streamed} == {"agent"}
    text_chunks = [chunk.content for chunk in chunks if chunk.content]
    assert len(text_chunks) > 1
    final = messages[-1]
    assert isinstance(final, AIMessage)
    assert "".join(text_chunks) == final.content
    assert len(str(final.content).split()) >= 12


def test_reply_counts_messages_and_grows_on_the_next_turn() -> None:
    """The reply says how many messages it has seen, and more on turn 2 of the same thread."""

    async def scenario() -> tuple[str, str]:
        graph = demo_graph()
        await stream_messages(graph, "hello", "t-1")
        first = (await final_messages(graph, "t-1"))[-1].content
        await stream_messages(graph, "hello again", "t-1")
        second = (await final_messages(graph, "t-1"))[-1].content
        return str(first), str(second)

    first, second = asyncio.run(scenario())
    assert seen_count(first) == 1
    assert "I have seen 1 message in" in first
    assert seen_count(second) > seen_count(first)
    assert seen_count(second) == 3


def test_threads_are_independent() -> None:
    """A new thread starts its count from one again."""

    async def scenario() -> str:
        graph = demo_graph()
        await stream_messages(graph, "hello", "t-1")
        await stream_messages(graph, "hello again", "t-1")
        await stream_messages(graph, "hello", "t-2")
        return str((await final_messages(graph, "t-2"))[-1].content)

    assert seen_count(asyncio.run(scenario())) == 1


def test_tool_word_triggers_a_tool_call_and_a_reply_with_its_result() -> None:
    """ "tool" in a message makes the model call count_words; the tools node answers it."""

    async def scenario() -> tuple[list[tuple[Any, dict[str, Any]]], list[Any]]:
        graph = demo_graph()
        streamed = await stream_messages(graph, "please use the tool now", "t-tool")
        return streamed, await final_messages(graph, "t-tool")

    streamed, messages = asyncio.run(scenario())

    call_chunks = [
        chunk
        for chunk, _ in streamed
        if isinstance(chunk, AIMessageChunk) and chunk.tool_call_chunks
    ]
    assert call_chunks
    assert call_chunks[0].tool_call_chunks[0]["name"] == "count_words"

    tool_streamed = [
        (chunk, metadata) for chunk, metadata in streamed if isinstance(chunk, ToolMessage)
    ]
    assert len(tool_streamed) == 1
    tool_message, tool_meta = tool_streamed[0]
    assert tool_meta["langgraph_node"] == "tools"
    assert tool_message.content == "5 words"

    human, ai_call, tool_result, reply = messages
    assert isinstance(human, HumanMessage)
    assert isinstance(ai_call, AIMessage)
    assert ai_call.tool_calls[0]["name"] == "count_words"
    assert ai_call.tool_calls[0]["args"] == {"text": "please use the tool now"}
    assert isinstance(tool_result, ToolMessage)
    assert tool_result.tool_call_id == ai_call.tool_calls[0]["id"]
    assert isinstance(reply, AIMessage)
    assert not reply.tool_calls
    assert "The tool said: 5 words." in str(reply.content)


def test_word_containing_tool_does_not_trigger_a_call() -> None:
    """Only the word "tool(s)" triggers a call, not words that merely contain it."""

    async def scenario() -> list[Any]:
        graph = demo_graph()
        await stream_messages(graph, "a toolbox and a stool", "t-1")
        return await final_messages(graph, "t-1")

    messages = asyncio.run(scenario())
    assert len(messages) == 2
    assert not messages[-1].tool_calls


def test_custom_mode_yields_progress_dicts_with_a_stage() -> None:
    """`custom` mode yields dicts with a `stage` from the agent and the tool."""

    async def scenario() -> list[Any]:
        graph = demo_graph()
        return [
            item
            async for item in graph.astream(
                user("count with the tool"), config("t-1"), stream_mode="custom"
            )
        ]

    progress = asyncio.run(scenario())
    assert progress
    assert all(isinstance(item, dict) and "stage" in item for item in progress)
    stages = [item["stage"] for item in progress]
    assert stages == ["thinking", "replied", "tool", "thinking", "replied"]
    assert progress[0]["messages_seen"] == 1
    assert progress[3]["messages_seen"] == 3
