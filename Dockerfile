# One slim image for both the service and the publisher; no test dependencies.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY service ./service
COPY publisher ./publisher
COPY web ./web
COPY docs/asyncapi.yaml ./docs/asyncapi.yaml
RUN pip install --no-compile . \
    && useradd --system --uid 10001 --home-dir /app quotes

USER quotes
# The packages run from /app so the service finds web/ beside them.
ENV HOST=0.0.0.0 PORT=8000
EXPOSE 8000
CMD ["python", "-m", "service"]
