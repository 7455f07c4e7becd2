# mcpstore-proxy as a container image: a build stage makes a virtual environment with the package in it, and the
# runtime stage copies only that environment onto a clean base and runs it as an unprivileged user.
#
#   docker build -t mcpstore-proxy .                                  # from python:3.11-slim
#   scripts/build_image.sh                                            # here: a Debian base made with mmdebstrap
#   docker run -p 127.0.0.1:8765:8765 -v ./proxy.yaml:/config/proxy.yaml:ro -e ALICE_TOKEN mcpstore-proxy
#
# The image serves on 0.0.0.0, so the config must have `auth` (or say `auth: {mode: none}`): without it the proxy
# refuses to start. Secrets stay out of the config: write `${ALICE_TOKEN}` there and pass the variable with -e.
# Any base with python3 (3.11 or newer) and its venv module works, e.g. Debian bookworm's python3 and python3-venv.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
LABEL org.opencontainers.image.title="mcpstore-proxy"
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY mcpstore_proxy ./mcpstore_proxy
# The pip cache is a build cache mount, not a layer: kept out of the image, and reused by the next build.
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/mcpstore-proxy \
    && /opt/mcpstore-proxy/bin/python -m pip install --disable-pip-version-check --quiet -c /src/constraints.txt /src \
    && /opt/mcpstore-proxy/bin/mcpstore-proxy --version

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="mcpstore-proxy"
# A fixed uid and gid, so that Kubernetes' runAsUser and fsGroup, and the owner of a mounted volume, can name them.
RUN groupadd --system --gid 10001 mcpstore \
    && useradd --system --uid 10001 --gid mcpstore --home-dir /home/mcpstore --create-home \
        --shell /usr/sbin/nologin mcpstore \
    && mkdir -p /config /data \
    && chown mcpstore:mcpstore /data
COPY --from=build /opt/mcpstore-proxy /opt/mcpstore-proxy
ENV PATH=/opt/mcpstore-proxy/bin:$PATH \
    MCPSTORE_PROXY_CONFIG=/config/proxy.yaml \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# Writable state (tool pins, services added at run time) belongs in /data: point tool_pins_file and
# runtime_services_file there, since a mounted config folder is read-only.
WORKDIR /data
EXPOSE 8765
# Liveness: the event loop answers. urlopen raises (exit 1) on anything but a 2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8765/health', timeout=4)"]
ENTRYPOINT ["mcpstore-proxy"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8765"]
