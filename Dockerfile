FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY mcpstore_proxy ./mcpstore_proxy
COPY config ./config
RUN pip install --no-cache-dir .

EXPOSE 8765
# Bound to all interfaces inside the container; clients reach it through the published port as localhost.
CMD ["mcpstore-proxy", "serve", "--host", "0.0.0.0", "--config", "/app/config/proxy.yaml"]
