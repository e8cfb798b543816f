# A Switchyard model server for hosted models: the openai, anthropic and ollama
# backends (no inference engine in the image).
#
#   docker build -f deploy/docker/modelserver-cloud.Dockerfile -t switchyard/modelserver-cloud .
#
# Build from the repository root. BACKENDS lists the extras of
# services/modelserver to install (comma-separated); each cloud backend
# declares its SDK there. API keys come from the environment or mounted files
# at run time, never from the image.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_NO_INDEX
ARG BACKENDS=openai,anthropic,ollama
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/switchyard
COPY deploy/docker/wheels/ /wheels/
COPY requirements/constraints.txt /src/requirements/constraints.txt
COPY clients/python/ /src/clients/python/
COPY services/common/ /src/services/common/
COPY services/modelserver/ /src/services/modelserver/
RUN /opt/switchyard/bin/pip install --find-links /wheels \
      -c /src/requirements/constraints.txt \
      /src/clients/python /src/services/common "/src/services/modelserver[${BACKENDS}]"

FROM ${BASE_IMAGE}
COPY --from=build /opt/switchyard /opt/switchyard
ENV PATH=/opt/switchyard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
EXPOSE 50061 9464
ENTRYPOINT ["switchyard-modelserver"]
CMD ["--config", "/etc/switchyard/config.yaml"]
