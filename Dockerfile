# wan-batch: one image for the worker, beat, flower and web (dashboard) services of docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY jobs ./jobs
COPY runner ./runner
RUN pip install ".[monitor]" \
    && useradd --create-home --uid 1000 wan \
    && mkdir -p /data/out /data/manifests \
    && chown -R wan /data

USER wan
WORKDIR /data
# Manifests go in /data/manifests, outputs in /data/out: the same paths in every container.
CMD ["wan-batch", "--help"]
