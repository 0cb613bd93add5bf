"""gunicorn settings and worker class for `graphgate serve --workers N` (N > 1).

The CLI builds a gunicorn application from these; see docs/deployment.md. Each value is
derived from Settings so there is one place to configure the service.
"""

from __future__ import annotations

import os
from typing import Any

from uvicorn_worker import UvicornWorker

from service.settings import Settings


class GraphgateUvicornWorker(UvicornWorker):  # type: ignore[misc]
    """uvicorn_worker.UvicornWorker with graphgate's server options."""

    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 - the base class's extension point
        "loop": "auto",
        "http": "auto",
        "lifespan": "on",
        # No `server: uvicorn` header: don't advertise the stack.
        "server_header": False,
        # The app resolves X-Forwarded-For itself (from [server] trusted_proxies, in its
        # middleware list), so it behaves the same under any server; uvicorn must not
        # rewrite the client address a second time.
        "proxy_headers": False,
    }


WORKER_CLASS = f"{GraphgateUvicornWorker.__module__}.{GraphgateUvicornWorker.__qualname__}"


def default_worker_tmp_dir() -> str | None:
    # gunicorn's heartbeat file is touched constantly; on a disk-backed /tmp that can
    # stall workers, so use tmpfs when there is one.
    shm = "/dev/shm"  # noqa: S108 - gunicorn's documented tmpfs choice; files are 0600 per worker
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def bind_address(host: str, port: int) -> str:
    # gunicorn wants IPv6 literals bracketed: "[::]:8000", not ":::8000".
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn hook: a worker is gone, so its live gauges (open streams…) stop counting."""
    from service.observability.prometheus import mark_worker_dead

    mark_worker_dead(worker.pid)


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    server = settings.server
    binds = [bind_address(server.host, server.port)]
    if settings.metrics.enabled and settings.metrics.port is not None:
        # The internal scrape listener; the app serves only /metrics (and probes) there.
        binds.append(bind_address(server.host, settings.metrics.port))
    return {
        "bind": binds,
        "child_exit": child_exit,
        "workers": server.worker_count,
        "worker_class": WORKER_CLASS,
        # How long workers may finish open streams after SIGTERM before being killed.
        "graceful_timeout": server.graceful_timeout_s,
        # Longer than nginx's upstream keepalive_timeout (60 s), or nginx may reuse a
        # connection the worker is closing and answer 502.
        "keepalive": server.keep_alive_s,
        "worker_tmp_dir": server.worker_tmp_dir or default_worker_tmp_dir(),
        # gunicorn's own use (its access log and wsgi.url_scheme); the app decides for itself.
        "forwarded_allow_ips": ",".join(server.trusted_proxies),
        "max_requests": server.max_requests,
        "max_requests_jitter": server.max_requests_jitter,
        # gunicorn 27 opens ~/.gunicorn/gunicorn.ctl by default; two instances on one
        # host would share it silently. graphgate does not use the control socket.
        "control_socket_disable": True,
        "proc_name": "graphgate",
        "accesslog": None,
        # The master's own lines ("Booting worker"…) in graphgate's log format too.
        "logger_class": "service.observability.logging.GunicornLogger",
        "errorlog": "-",
        "loglevel": settings.logging.level.lower(),
    }
