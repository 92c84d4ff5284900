# Stand-in for python:3.11-slim built from the local debootstrap base (no registry here).
FROM local/bookworm:base
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        ca-certificates && rm -rf /var/lib/apt/lists/*
COPY . /usr/local/share/ca-certificates/
RUN update-ca-certificates && python3 -m venv /usr/local/python \
    && ln -s /usr/local/python/bin/python /usr/local/bin/python \
    && ln -s /usr/local/python/bin/pip /usr/local/bin/pip
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
