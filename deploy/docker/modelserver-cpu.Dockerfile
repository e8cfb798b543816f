# A Switchyard model server with the llama.cpp backend (CPU, GGUF models).
#
#   docker build -f deploy/docker/modelserver-cpu.Dockerfile -t switchyard/modelserver-cpu .
#
# Build from the repository root. llama-cpp-python is compiled portable
# (-DGGML_NATIVE=OFF): a native build uses the build machine's newest
# instructions (AMX on some CPUs crashes quantized models) and is unsafe on
# other CPUs. A prebuilt wheel in deploy/docker/wheels/ (for example the one
# scripts/build-llamacpp-wheel.sh caches in ~/.cache/switchyard/wheelhouse) is
# used as is and skips the 10-minute compile.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_NO_INDEX
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
COPY deploy/docker/wheels/ /wheels/
# The compiler toolchain only when there is no prebuilt wheel to install.
RUN if ! ls /wheels/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}-*.whl >/dev/null 2>&1; then \
      apt-get update && \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential cmake ninja-build git && \
      rm -rf /var/lib/apt/lists/*; \
    fi
RUN python3 -m venv /opt/switchyard
COPY requirements/constraints.txt /src/requirements/constraints.txt
COPY clients/python/ /src/clients/python/
COPY services/common/ /src/services/common/
COPY services/modelserver/ /src/services/modelserver/
RUN CMAKE_ARGS="-DGGML_NATIVE=OFF" /opt/switchyard/bin/pip install --find-links /wheels \
      -c /src/requirements/constraints.txt \
      /src/clients/python /src/services/common "/src/services/modelserver[llamacpp]"

FROM ${BASE_IMAGE}
# llama.cpp's OpenMP runtime, where the base does not have it already.
RUN if ! ldconfig -p | grep -q 'libgomp\.so\.1'; then \
      apt-get update && \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgomp1 && \
      rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=build /opt/switchyard /opt/switchyard
ENV PATH=/opt/switchyard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
# GGUF files are mounted here (a volume, a PVC or an image volume).
VOLUME ["/models"]
EXPOSE 50061 9464
ENTRYPOINT ["switchyard-modelserver"]
CMD ["--config", "/etc/switchyard/config.yaml"]
