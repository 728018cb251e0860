# One slim image for both the service and the publisher; no test dependencies.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY clients/python ./clients/python
COPY service ./service
COPY publisher ./publisher
COPY web ./web
# The JS client's modules: the widget imports them from /js/ (service/app.py).
COPY clients/js/src ./clients/js/src
COPY docs/asyncapi.yaml ./docs/asyncapi.yaml
# The client package (psx-quote-client, which the server depends on) from its path, in the
# same resolve as the server.
RUN pip install --no-compile ./clients/python . \
    && useradd --system --uid 10001 --home-dir /app quotes

USER quotes
# The packages run from /app so the service finds web/ beside them.
ENV HOST=0.0.0.0 PORT=8000
EXPOSE 8000
CMD ["python", "-m", "service"]
