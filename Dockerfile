# One image for the API, the responder and the mock model; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The pinned runtime dependencies first, in their own layer: a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY shared ./shared
COPY services ./services
COPY mock_openai ./mock_openai
RUN pip install --no-deps . \
    && rm -rf build ./*.egg-info \
    && useradd --system --no-create-home --home-dir /app app

COPY scripts/docker-entrypoint /usr/local/bin/docker-entrypoint
RUN chmod 0755 /usr/local/bin/docker-entrypoint

USER app
EXPOSE 8000 8100
ENTRYPOINT ["docker-entrypoint"]
CMD ["python", "-m", "services.api"]
