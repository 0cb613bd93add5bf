"""The built-in demo graph: fully offline, deterministic, and exercising every stream mode.

- A fake chat model streams real token deltas (through LangChain's callback path, so
  LangGraph's `messages` mode sees them exactly as it would a provider's), with a pause
  before each token (`[demo] token_delay_ms`) and a reply length (`[demo] reply_tokens`).
- Its reply depends on the conversation: it says how many messages it has seen.
- A message containing the word "tool" makes it call the `count_words` tool, run by a
  LangGraph ToolNode, whose result it then reports.
- Both nodes write progress through LangGraph's stream writer (`custom` mode).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.tools import tool
from langgraph.config import get_stream_writer
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from service.settings import Settings

_FILLER = (
    "This reply comes from graphgate's offline demo model, streamed token by token "
    "so you can watch Server-Sent Events arrive."
).split(" ")


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return " ".join(
        block.get("text", "") if isinstance(block, dict) else str(block) for block in content
    )


class DemoChatModel(BaseChatModel):
    """A deterministic chat model whose reply depends on the conversation so far."""

    token_delay_s: float = 0.0
    reply_tokens: int = 24

    @property
    def _llm_type(self) -> str:
        return "graphgate-demo"

    def _plan(self, messages: Sequence[BaseMessage]) -> AIMessage:
        last = messages[-1] if messages else None
        seen = len(messages)
        if isinstance(last, HumanMessage) and re.search(r"\btools?\b", _text(last), re.I):
            return AIMessage(
                content="",
                tool_calls=[
                    {"name": "count_words", "args": {"text": _text(last)}, "id": f"call_{seen}"}
                ],
            )
        words = [f"I have seen {seen} message{'s' if seen != 1 else ''} in this conversation."]
        if isinstance(last, ToolMessage):
            words.append(f"The tool said: {_text(last)}.")
        tokens = " ".join(words).split()
        filler = itertools.cycle(_FILLER)
        while len(tokens) < self.reply_tokens:
            tokens.append(next(filler))
        return AIMessage(content=" ".join(tokens))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._plan(messages))])

    def _chunks(self, message: AIMessage) -> Iterator[AIMessageChunk]:
        if message.tool_calls:
            call = message.tool_calls[0]
            yield AIMessageChunk(
                content="",
                tool_call_chunks=[
                    {
                        "name": call["name"],
                        "args": json.dumps(call["args"]),
                        "id": call["id"],
                        "index": 0,
                    }
                ],
            )
            return
        words = str(message.content).split(" ")
        for index, word in enumerate(words):
            yield AIMessageChunk(content=word if index == len(words) - 1 else word + " ")

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # langchain-core's streaming path reports each chunk to the callbacks, which is
        # where LangGraph's `messages` stream mode picks it up.
        for chunk in self._chunks(self._plan(messages)):
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            yield ChatGenerationChunk(message=chunk)


@tool
def count_words(text: str) -> str:
    """Count the words in a text."""
    get_stream_writer()({"stage": "tool", "tool": "count_words"})
    return f"{len(text.split())} words"


def build_demo_graph(model: BaseChatModel) -> StateGraph[Any]:
    """The demo graph's builder around any chat model (tests pass their own)."""

    async def agent(state: MessagesState) -> dict[str, Any]:
        write = get_stream_writer()
        write({"stage": "thinking", "messages_seen": len(state["messages"])})
        reply = await model.ainvoke(state["messages"])
        write({"stage": "replied"})
        return {"messages": [reply]}

    builder: StateGraph[Any] = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode([count_words]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder


def make_demo_graph(settings: Settings) -> StateGraph[Any]:
    """Graph factory used when no graphs are configured."""
    model = DemoChatModel(
        token_delay_s=settings.demo.token_delay_ms / 1000,
        reply_tokens=settings.demo.reply_tokens,
    )
    return build_demo_graph(model)
