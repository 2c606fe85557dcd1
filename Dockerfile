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
#
# Build arguments, for machines without a registry or behind a TLS-intercepting proxy:
#   PYTHON_IMAGE   the base of both stages (default: the official Python slim image). Any Debian-like
#                  image with python (3.11+), its venv module, useradd and groupadd works;
#                  scripts/build-base-image.sh makes one from the Debian mirror with debootstrap.
#   PIP_INDEX_URL  where pip finds packages in the build stage (default PyPI).
# Extra CA certificates (a proxy's root, PEM) are a BuildKit secret (so BuildKit is required: Docker
# 23+ has it by default, 20.10 needs DOCKER_BUILDKIT=1), used by pip in the build stage only; they
# never reach a layer of either stage, so the published image cannot contain them:
#   DOCKER_BUILDKIT=1 docker build --secret id=extra-ca,src=/usr/local/share/ca-certificates/proxy.crt .
# (scripts/compose-smoke.sh passes every *.crt under /usr/local/share/ca-certificates this way and
# then checks the image for them.)

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_INDEX_URL=${PIP_INDEX_URL}
RUN python -m venv /opt/servelab
WORKDIR /src
COPY pyproject.toml README.md ./
# With the `extra-ca` secret, pip trusts the system bundle (pip's own if there is none) plus the
# extras, written to /tmp and removed in the same RUN so no layer keeps it. The secret is mounted
# for these two RUNs only and is never part of a layer.
RUN --mount=type=secret,id=extra-ca,required=false \
    set -eu; \
    if [ -s /run/secrets/extra-ca ]; then \
      base=/etc/ssl/certs/ca-certificates.crt; \
      [ -s "$base" ] || base=$(/opt/servelab/bin/python -c 'import pip._vendor.certifi as c; print(c.where())'); \
      cat "$base" /run/secrets/extra-ca >/tmp/pip-ca.pem; export PIP_CERT=/tmp/pip-ca.pem; \
    fi; \
    mkdir -p gateway server loadtest servelab; \
    touch gateway/__init__.py server/__init__.py loadtest/__init__.py servelab/__init__.py; \
    /opt/servelab/bin/pip install .; \
    /opt/servelab/bin/pip uninstall -y servelab; \
    rm -f /tmp/pip-ca.pem
COPY gateway ./gateway
COPY server ./server
COPY loadtest ./loadtest
COPY servelab ./servelab
RUN --mount=type=secret,id=extra-ca,required=false \
    set -eu; \
    if [ -s /run/secrets/extra-ca ]; then \
      base=/etc/ssl/certs/ca-certificates.crt; \
      [ -s "$base" ] || base=$(/opt/servelab/bin/python -c 'import pip._vendor.certifi as c; print(c.where())'); \
      cat "$base" /run/secrets/extra-ca >/tmp/pip-ca.pem; export PIP_CERT=/tmp/pip-ca.pem; \
    fi; \
    /opt/servelab/bin/pip install --no-deps .; \
    rm -f /tmp/pip-ca.pem

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
