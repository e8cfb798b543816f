# A Switchyard model server with the vLLM backend (NVIDIA GPUs).
#
#   docker build -f deploy/docker/modelserver-vllm.Dockerfile -t switchyard/modelserver-vllm .
#   docker run --gpus all -v /srv/models:/models:ro \
#     -v $PWD/deploy/examples/modelserver-vllm.yaml:/etc/switchyard/config.yaml:ro \
#     -p 50061:50061 switchyard/modelserver-vllm
#
# Build from the repository root. The CUDA base image is a build argument, so
# it can follow the cluster's driver (vLLM's wheels bring their own CUDA
# libraries; the base provides the user-space pieces the driver expects).
# vLLM is the release the modelserver's `vllm` extra pins (the tests run the
# CPU build of the same release). Not built on the project's CI machines (no
# GPU, no CUDA registry there).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN apt-get update && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev build-essential && \
    rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/switchyard
COPY requirements/constraints.txt /src/requirements/constraints.txt
COPY clients/python/ /src/clients/python/
COPY services/common/ /src/services/common/
COPY services/modelserver/ /src/services/modelserver/
RUN /opt/switchyard/bin/pip install -c /src/requirements/constraints.txt \
      /src/clients/python /src/services/common "/src/services/modelserver[vllm]"

FROM ${CUDA_IMAGE}
# gcc, libc headers and Python.h at run time: Triton (under vLLM's and
# torch.compile's kernels) compiles its small launcher modules on first use.
RUN apt-get update && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 gcc libc6-dev python3-dev && \
    rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/switchyard /opt/switchyard
ENV PATH=/opt/switchyard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    VLLM_CACHE_ROOT=/tmp/vllm
USER 10001:10001
# Hugging Face model folders are mounted here (a volume, a PVC or an image volume).
VOLUME ["/models"]
EXPOSE 50061 9464
ENTRYPOINT ["switchyard-modelserver"]
CMD ["--config", "/etc/switchyard/config.yaml"]
