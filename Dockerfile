# syntax=docker/dockerfile:1
#
# One image for every Mailroom service; the command chooses what runs:
#   python -m services.registry | services.authz | services.sync | services.sender | services.audit
#   python -m libs.common.migrate          (Alembic migrations of every service database)
# Listens on 0.0.0.0:8080 (MAILROOM_HTTP_PORT); /healthz and /readyz. No secret is baked in:
# keys, passwords and database URLs come from the environment and mounted files at run time.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a virtualenv with the project installed from pyproject.toml ----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/mailroom
ENV PATH=/opt/mailroom/bin:$PATH
WORKDIR /src
# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN mkdir -p libs services \
 && touch libs/__init__.py services/__init__.py \
 && pip install . \
 && pip uninstall --yes mailroom \
 && rm -rf libs services
# Then the code itself.
COPY libs ./libs
COPY services ./services
RUN pip install --no-deps . \
 && python -m compileall -q /opt/mailroom/lib

# --- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mailroom" \
      org.opencontainers.image.description="Mailroom: self-hosted hub for an organisation's email accounts" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/mailroom/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MAILROOM_HTTP_HOST=0.0.0.0 \
    MAILROOM_HTTP_PORT=8080 \
    MAILROOM_DATA_DIR=/var/lib/mailroom
RUN groupadd --system --gid 10001 mailroom \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
            --home-dir /var/lib/mailroom --shell /usr/sbin/nologin mailroom \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/mailroom
COPY --from=build /opt/mailroom /opt/mailroom
WORKDIR /var/lib/mailroom
USER 10001:10001
EXPOSE 8080
# No default service: say which one to run.
CMD ["python", "-c", "raise SystemExit('mailroom image: run python -m services.<registry|authz|sync|sender|audit> or python -m libs.common.migrate')"]
