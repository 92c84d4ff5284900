# One image for every Lepton service; the command picks the service (see docker-compose.yml).
# Build args:
#   BASE_IMAGE   Python 3.11 base (default python:3.11-slim; scripts/compose-smoke.sh passes a
#                locally built one where no registry is reachable)
#   TORCH_INDEX  simple index holding torch (CPU by default; the gpu profile passes a CUDA one)
#   TORCH_SPEC   the torch requirement
# Extra CA certificates in docker/ca-certificates/*.crt (a TLS-intercepting proxy) are trusted
# by the build stage only. Dependencies are installed before the sources are copied, so a
# code change rebuilds only the last layers.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch==2.13.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
COPY docker/ca-certificates/ /usr/local/share/ca-certificates/lepton/
RUN if ls /usr/local/share/ca-certificates/lepton/*.crt >/dev/null 2>&1; then \
        update-ca-certificates >/dev/null; fi
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN python -m venv /opt/lepton
ENV PATH=/opt/lepton/bin:$PATH
# torch alone from its index (--index-url: an unreachable index must fail, not fall back to
# the registry's multi-GB CUDA build), then its own requirements from the default index
WORKDIR /src
COPY docker/requirements.py ./docker/
RUN pip install --no-deps --index-url "$TORCH_INDEX" "$TORCH_SPEC" \
    && python docker/requirements.py dist torch > /tmp/torch.txt \
    && pip install -r /tmp/torch.txt
COPY pyproject.toml ./
RUN python docker/requirements.py project pyproject.toml torch > /tmp/deps.txt \
    && pip install -r /tmp/deps.txt
COPY README.md ./
COPY shared ./shared
COPY services ./services
COPY lepton ./lepton
COPY proto ./proto
RUN pip install --no-deps . && pip check

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/lepton/bin:$PATH \
    LEPTON_DATA_DIR=/data
COPY --from=build /opt/lepton /opt/lepton
# every volume mount point exists and belongs to the service user, so named volumes start
# out writable by uid 10001
RUN useradd --create-home --uid 10001 lepton \
    && mkdir -p /data /keys /registry /principals \
    && chown 10001:10001 /data /keys /registry \
    && chmod 0700 /keys
USER 10001
ENTRYPOINT ["lepton"]
