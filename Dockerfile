# One image for every Lepton service; the command picks the service (see docker-compose.yml).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends kcat \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY lepton ./lepton
COPY proto ./proto
RUN pip install --extra-index-url "$TORCH_INDEX" "torch==2.13.0" && pip install .
RUN useradd --create-home --uid 10001 lepton && mkdir -p /data && chown lepton /data
USER lepton
ENV LEPTON_DATA_DIR=/data
ENTRYPOINT ["lepton"]
