# graphgate container image.
#
# Build: scripts/build-image.sh (or `make image`), which also works without network access
# inside the build (see docs/deploy-k8s.md). With a container engine that can reach PyPI,
# a plain build works too:
#   docker build --build-arg REVISION=$(git rev-parse HEAD) -t graphgate:0.1.0 .
#
# Run: the entrypoint is `graphgate`, the default command `serve`, which starts gunicorn
# with uvicorn workers (service/gunicorn_conf.py). Everything is configured through
# GRAPHGATE_* variables, a TOML file named by GRAPHGATE_CONFIG and a secrets directory
# (docs/configuration.md). Writable paths are only the three VOLUMEs below, so the
# image runs with a read-only root filesystem (docker run --read-only, or Kubernetes'
# readOnlyRootFilesystem with emptyDirs there, as deploy/k8s does).

# The base for both stages. Pinned to a patch release; pin it by digest as well in your
# pipeline (`--build-arg BASE=python:3.11.14-slim-bookworm@sha256:…`), which this
# repository cannot resolve offline. Any Debian-like image with python3 (3.11+), the
# venv module and useradd works: the offline build uses a debootstrapped bookworm.
ARG BASE=python:3.11.14-slim-bookworm

# ---- build: wheels for graphgate and its dependencies, installed into a venv ----------
FROM ${BASE} AS build

# 1 in offline builds: every wheel must then come from wheelhouse/ in the context, which
# scripts/build-image.sh fills beforehand (with the base's own Python, where the package
# index is reachable and trusted). Without a wheelhouse/, pip uses the index.
ARG PIP_NO_INDEX=0
ARG VERSION=0.1.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1

# .dockerignore lets in only pyproject.toml, README.md, service/ and wheelhouse/.
COPY . /src

# Build graphgate's wheel from source, then install exactly that version and its
# dependencies from the wheels just made. pip itself is removed from the venv: the
# runtime never installs anything.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip wheel --no-cache-dir --wheel-dir /wheels --find-links /src/wheelhouse /src \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels "graphgate==${VERSION}" \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

# ---- runtime: the base, one unprivileged user, the venv ---------------------------------
FROM ${BASE} AS runtime

ARG BASE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="graphgate" \
      org.opencontainers.image.description="LangGraph graphs over HTTP with Server-Sent Events and durable threads" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE}"

# A fixed numeric uid/gid (10001, outside the range distributions hand out), so
# Kubernetes' runAsNonRoot can verify it without a passwd lookup and runAsUser matches.
# The writable directories belong to it; everything else stays root-owned and read-only.
RUN groupadd --gid 10001 graphgate \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin graphgate \
    && install -d -o 10001 -g 10001 -m 0700 /run/graphgate /var/lib/graphgate

COPY --from=build /opt/venv /opt/venv

# Paths that belong to the image layout, not to a deployment's configuration:
# - /run/graphgate: Prometheus multiprocess files (`graphgate serve` creates and empties
#   the metrics directory at every start) and gunicorn's worker heartbeat files;
# - /var/lib/graphgate: the SQLite database when no database_url is set.
# The .pyc files were compiled at install time; nothing is written next to the code.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PROMETHEUS_MULTIPROC_DIR=/run/graphgate/metrics \
    GRAPHGATE_SERVER__WORKER_TMP_DIR=/run/graphgate \
    GRAPHGATE_DATA_DIR=/var/lib/graphgate
VOLUME ["/run/graphgate", "/var/lib/graphgate", "/tmp"]
WORKDIR /var/lib/graphgate
USER 10001:10001

# 8000: the API ([server] port). 9464: the internal metrics listener ([metrics] port),
# when configured.
EXPOSE 8000 9464

# gunicorn's graceful stop: stop accepting, let graphgate drain open streams for
# [server] drain_timeout_s, and kill what is left after graceful_timeout_s
# (docs/deployment.md, "Graceful drain"). SIGTERM is the default; stated so nobody
# changes it to SIGQUIT/SIGINT, which gunicorn treats as an immediate stop.
STOPSIGNAL SIGTERM

# Liveness only (never the database, like the Kubernetes livenessProbe). Python, because
# the image has no curl; the port follows GRAPHGATE_SERVER__PORT when it is set.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GRAPHGATE_SERVER__PORT', '8000'), timeout=4)"]

# Exec form: gunicorn's master is PID 1 and receives SIGTERM itself (no shell in
# between to swallow it); it reaps its own workers, so no init process is needed.
# --host 0.0.0.0: reachable from outside the container. Flags win over every other
# settings source, so a deployment that wants another host, port or worker count from
# its config file replaces the command with plain `serve` (deploy/k8s does).
ENTRYPOINT ["graphgate"]
CMD ["serve", "--host", "0.0.0.0", "--workers", "2"]
