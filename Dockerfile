# servelab: gateway, simulator and CLI in one slim image.
#
#   docker build -t servelab:0.1.0 .
#   docker run --rm -p 8080:8080 servelab:0.1.0 gateway --config /etc/servelab/gateway.yaml --host 0.0.0.0 --port 8080
#   docker run --rm -p 8000:8000 -e SERVELAB_HEALTH_URL=http://127.0.0.1:8000/health \
#       servelab:0.1.0 serve --engine sim --model mixtral-8x7b --gpu h100 --tp 2 --host 0.0.0.0 --port 8000
#
# Built from the repo's pyproject only (no dev extras, no torch, no vLLM: the GPU path runs the
# official vllm/vllm-openai image). No secrets are baked in: the admin token and REDIS_URL come from
# the environment at run time. Runs as an unprivileged user with a fixed UID so Kubernetes
# `runAsNonRoot` can check it; caches go to /tmp so a read-only root filesystem works (k8s/).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/servelab
WORKDIR /src
# Dependencies first (they change rarely), then the sources, so a code edit reuses the dependency layer.
COPY pyproject.toml README.md ./
RUN mkdir -p gateway server loadtest servelab \
    && touch gateway/__init__.py server/__init__.py loadtest/__init__.py servelab/__init__.py \
    && /opt/servelab/bin/pip install . \
    && /opt/servelab/bin/pip uninstall -y servelab
COPY gateway ./gateway
COPY server ./server
COPY loadtest ./loadtest
COPY servelab ./servelab
RUN /opt/servelab/bin/pip install --no-deps .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="servelab" \
      org.opencontainers.image.description="Multi-tenant LLM gateway, vLLM-like MoE simulator and load tests" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 servelab \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/servelab --create-home servelab
COPY --from=build /opt/servelab /opt/servelab
ENV PATH=/opt/servelab/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SERVELAB_HEALTH_URL=http://127.0.0.1:8080/healthz \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /home/servelab
EXPOSE 8080 8000
# One image, two servers: the gateway answers /healthz on 8080 (the default here), the simulator
# /health on 8000; a container running the simulator sets SERVELAB_HEALTH_URL accordingly.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(os.environ['SERVELAB_HEALTH_URL'], timeout=2).status == 200 else 1)"]
ENTRYPOINT ["servelab"]
CMD ["--help"]
