# The Switchyard router: routes switchyard.v1.LLMService calls to model servers.
#
#   docker build -f deploy/docker/router.Dockerfile -t switchyard/router .
#
# Build from the repository root. BASE_IMAGE is any Debian-like image with
# python3 (3.11+) and its venv module; the same image is used for both stages,
# so the virtual environment copied between them finds its interpreter.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# Optional pip settings for mirrors or offline builds, e.g.
# --build-arg PIP_NO_INDEX=1 with every wheel in deploy/docker/wheels/.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_NO_INDEX
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/switchyard
COPY deploy/docker/wheels/ /wheels/
COPY requirements/constraints.txt /src/requirements/constraints.txt
COPY clients/python/ /src/clients/python/
COPY services/common/ /src/services/common/
COPY services/router/ /src/services/router/
# Every version pinned by the project's constraints (the ones its tests ran with).
RUN /opt/switchyard/bin/pip install --find-links /wheels \
      -c /src/requirements/constraints.txt \
      /src/clients/python /src/services/common /src/services/router

FROM ${BASE_IMAGE}
COPY --from=build /opt/switchyard /opt/switchyard
ENV PATH=/opt/switchyard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# A numeric non-root user: no /etc/passwd entry needed, and Kubernetes'
# runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 50051 8080 9464
ENTRYPOINT ["switchyard-router"]
CMD ["--config", "/etc/switchyard/config.yaml"]
