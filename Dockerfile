# One slim image for both the service and the publisher; no test dependencies.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# The dependencies first, read from the two pyproject files alone: this layer is rebuilt
# when they change, not on every change to the code. (psx-quote-core is the core package
# below, not on an index.)
COPY pyproject.toml ./
COPY core/pyproject.toml ./core/
RUN python -c "import tomllib; deps = [d for f in ('core/pyproject.toml', 'pyproject.toml') for d in tomllib.load(open(f, 'rb'))['project']['dependencies'] if not d.startswith('psx-quote-core')]; open('/tmp/requirements.txt', 'w').write('\n'.join(deps))" \
    && pip install --no-compile -r /tmp/requirements.txt 'setuptools>=77' \
    && rm /tmp/requirements.txt \
    && useradd --system --uid 10001 --home-dir /app quotes

COPY README.md LICENSE ./
COPY core ./core
COPY service ./service
COPY publisher ./publisher
COPY quote_bus ./quote_bus
COPY quote_runtime ./quote_runtime
COPY quote_sim ./quote_sim
COPY web ./web
# The JS client's modules: the widget imports them from /js/ (service/app.py).
COPY clients/js/src ./clients/js/src
COPY docs/asyncapi.yaml ./docs/asyncapi.yaml
# The core (psx-quote-core, which the server depends on) from its path, in the same
# resolve as the server; everything else is installed above, so nothing is fetched.
RUN pip install --no-compile --no-build-isolation ./core .

USER quotes
# The packages run from /app so the service finds web/ beside them.
ENV HOST=0.0.0.0 PORT=8000
EXPOSE 8000
CMD ["python", "-m", "service"]
