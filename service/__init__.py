"""graphgate: serve LangGraph graphs over FastAPI with SSE streaming and durable threads."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("graphgate")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"
