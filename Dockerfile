# The image that launch/k8s/ runs: gspo-async and its dependencies, as a non-root user (uid 1000).
#   docker build -t gspo-async:0.1.0-cpu .                                   CPU build (torch's CPU wheel)
#   docker build -t gspo-async:0.1.0-cuda --build-arg VARIANT=cuda .         CUDA build (vLLM and DeepSpeed)
# Every version is pinned here; change them only together (vLLM pins the torch it needs, docs/vllm.md).
# The manifests name the image gspo-async:0.1.0-cuda: push it to your registry under that name or edit them.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG VARIANT=cpu
ARG TORCH_VERSION_CPU=2.13.0
ARG VLLM_VERSION=0.24.0
ARG DEEPSPEED_VERSION=0.19.8

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

WORKDIR /opt/gspo-async
COPY pyproject.toml README.md constraints-cpu.txt ./
COPY gspo_async ./gspo_async
COPY configs ./configs
COPY launch ./launch

RUN set -eux; \
    case "$VARIANT" in \
      cpu)  python -m pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION_CPU}"; \
            python -m pip install -c constraints-cpu.txt . ;; \
      cuda) python -m pip install "vllm==${VLLM_VERSION}" "deepspeed==${DEEPSPEED_VERSION}"; \
            python -m pip install ".[deepspeed]" ;; \
      *)    echo "VARIANT must be cpu or cuda, not '${VARIANT}'" >&2; exit 2 ;; \
    esac; \
    gspo-async --help > /dev/null

# Non-root, with group 1000 owning the mounted volumes (the manifests set fsGroup: 1000, so the secret's keys,
# mode 0440, are readable by this user and by nobody else).
RUN groupadd --gid 1000 gspo && useradd --uid 1000 --gid 1000 --create-home gspo \
    && mkdir -p /checkpoints && chown 1000:1000 /checkpoints
USER 1000
ENTRYPOINT []
CMD ["gspo-async", "--help"]
