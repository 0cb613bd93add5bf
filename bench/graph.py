"""The benchmark's fake graph, served identically by graphgate, the bare app and `langgraph dev`.

One node calls a fake chat model that streams `BENCH_TOKENS` tokens (default 50), pausing
`BENCH_TOKEN_DELAY_MS` milliseconds before each one (default 0). The model goes through
LangChain's streaming callbacks, so LangGraph's `messages` stream mode sees its tokens
exactly as it would a provider's.

Each token's text is the server's `time.monotonic_ns()` when the token was made (plus a
space). CLOCK_MONOTONIC is one clock for every process on the machine, so a client on the
same host can compute each event's one-way delay (server made it -> client parsed it),
which is how the nginx row measures what the proxy adds per event.

Knobs come from the environment because `langgraph dev` imports `graph` by path and
passes nothing; graphgate calls `make_graph()` (a factory, so it compiles the builder
with its own checkpointer), the bare app imports `builder()`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.graph import START, MessagesState, StateGraph

TOKENS_VAR = "BENCH_TOKENS"
DELAY_VAR = "BENCH_TOKEN_DELAY_MS"


def knobs() -> tuple[int, float]:
    """(tokens, delay in seconds) from the environment."""
    tokens = int(os.environ.get(TOKENS_VAR, "50"))
    delay_ms = float(os.environ.get(DELAY_VAR, "0"))
    return tokens, delay_ms / 1000


class StampModel(BaseChatModel):
    """Streams `tokens` tokens, each the server's monotonic clock in nanoseconds."""

    tokens: int = 50
    delay_s: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "graphgate-bench"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = "".join(f"{time.monotonic_ns()} " for _ in range(self.tokens))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for _ in range(self.tokens):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            # langchain-core reports each chunk to the callbacks itself (LangGraph's
            # `messages` mode listens there); reporting it here too would double it.
            yield ChatGenerationChunk(message=AIMessageChunk(content=f"{time.monotonic_ns()} "))


def builder(tokens: int | None = None, delay_s: float | None = None) -> StateGraph[Any]:
    """The graph's builder; arguments default to the environment's knobs."""
    env_tokens, env_delay = knobs()
    model = StampModel(tokens=env_tokens if tokens is None else tokens,
                       delay_s=env_delay if delay_s is None else delay_s)

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    graph: StateGraph[Any] = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_edge(START, "agent")
    return graph


def make_graph() -> StateGraph[Any]:
    """graphgate's factory (`GRAPHGATE_GRAPHS=bench=bench.graph:make_graph`)."""
    return builder()


def ten_tokens() -> StateGraph[Any]:
    """Fixed-size variants for the in-process protections bench (per-event cost)."""
    return builder(10, 0.0)


def hundred_tokens() -> StateGraph[Any]:
    return builder(100, 0.0)


# For `langgraph dev`, which supplies its own checkpointer.
graph = builder().compile()
