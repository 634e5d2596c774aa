# syntax=docker/dockerfile:1
# One image per connector:  docker build --build-arg CONNECTOR=mysql-sink -t meshconnect/mysql-sink .
# The build stage installs the package with only that connector's extra into /opt/venv; the final
# stage is a slim Python with that virtual environment, no compilers and no pip, run as a non-root user.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG CONNECTOR
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY services ./services
COPY deploy/image/install.sh ./deploy/image/install.sh
RUN test -n "${CONNECTOR}" || { echo "pass --build-arg CONNECTOR=<name>, e.g. mysql-sink" >&2; exit 1; } \
 && sh deploy/image/install.sh "${CONNECTOR}" /opt/venv /src \
 && /opt/venv/bin/python -m pip uninstall --quiet --yes pip \
 && /opt/venv/bin/python -m compileall -q /opt/venv

FROM ${PYTHON_IMAGE}
ARG CONNECTOR
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="meshconnect-${CONNECTOR}" \
      org.opencontainers.image.description="meshconnect ${CONNECTOR}: an Apache EventMesh connector" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="meshconnect" \
      io.meshconnect.connector="${CONNECTOR}"

RUN groupadd --system --gid 10001 meshconnect \
 && useradd --system --uid 10001 --gid meshconnect --home-dir /var/lib/meshconnect --shell /usr/sbin/nologin meshconnect \
 && install -d -o meshconnect -g meshconnect -m 0750 /var/lib/meshconnect /etc/meshconnect

COPY --from=build /opt/venv /opt/venv

# Relative paths in a config (a file registry's ./state, a file sink's output) land in the state
# directory, the one writable place besides /tmp when the root filesystem is read-only.
WORKDIR /var/lib/meshconnect
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MESHCONNECT_CONFIG=/etc/meshconnect/config.yaml

USER 10001:10001
# Admin HTTP: /healthz, /readyz, /metrics (Prometheus), /status; 8090 by convention (compose and
# Kubernetes set MESHCONNECT__ADMIN__PORT=8090), the config's admin.port otherwise.
EXPOSE 8090
# The probe reads $MESHCONNECT_CONFIG with the container's MESHCONNECT__... overrides, as the
# connector does, and asks /healthz on the admin port that config gives.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/opt/venv/bin/meshconnect", "probe"]

ENTRYPOINT ["/opt/venv/bin/meshconnect-connector"]
CMD ["--config", "/etc/meshconnect/config.yaml"]
