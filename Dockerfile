# clinie backend image. Its steps are the ones .ci/run exercises on every submission
# (python3 -m venv, pip install of this pyproject), so the image cannot silently rot.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    CLINIE_HOST=0.0.0.0 CLINIE_PORT=9090 CLINIE_DATA_DIR=/data

RUN useradd --create-home --uid 1000 clinie
WORKDIR /app
COPY pyproject.toml README.md ./
COPY clinie ./clinie
COPY ml_backend ./ml_backend
COPY label_configs ./label_configs
RUN python3 -m venv /app/.venv \
    && /app/.venv/bin/python -m pip install --quiet --upgrade pip \
    && /app/.venv/bin/python -m pip install --quiet -e . \
    && mkdir -p /data && chown clinie /data

USER clinie
VOLUME ["/data"]
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=4)"
CMD ["/app/.venv/bin/clinie", "serve"]
