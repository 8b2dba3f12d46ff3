# The notes MCP server as an OCI image (Kyma, or any container runtime). See docs/deploy-kyma.md.
#
#   docker build -t notes-mcp .            (or: podman build / buildah bud)
#   docker run --read-only -p 8080:8080 -e MCP_AUTH_ISSUER=... -e MCP_RESOURCE_URL=... notes-mcp
#
# BASE_IMAGE is any Debian-like image with python3 and its venv module at the version runtime.txt
# names (tests/deploy builds on a local Debian base, since no image registry is reachable there).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# -- build: a virtual environment with the exact pins of requirements.txt, wheels only ----------
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
# --only-binary: no compiler in either stage; pip's bytecode goes in with the packages, so a
# read-only root filesystem costs no start-up time.
RUN /opt/venv/bin/pip install --only-binary=:all: -r /tmp/requirements.txt
# Installers are not needed at run time: pip and setuptools (10 MB) stay in this stage.
RUN /opt/venv/bin/python -m pip uninstall -y -q setuptools pip
COPY auth/ /app/auth/
COPY server/ /app/server/
COPY tools/ /app/tools/
RUN /opt/venv/bin/python -m compileall -q -j 0 /app

# -- run: the base, the venv and the app; nothing else ----------------------------------------
FROM ${BASE_IMAGE}
ARG BASE_IMAGE
ARG VERSION=0.2.0
ARG REVISION=unknown
ARG SOURCE=""
ARG CREATED=""
LABEL org.opencontainers.image.title="notes-mcp" \
      org.opencontainers.image.description="Notes MCP server for SAP BTP, protected by OAuth (IAS, XSUAA, any JWT issuer)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
# A fixed numeric user (Kubernetes' runAsNonRoot can only verify a number); it owns nothing in the
# image: code and packages stay root-owned and read-only to it.
USER 10001:10001
WORKDIR /app
# HOST: every interface inside the container; PORT: the platform may set another.
# Notes: a bound PostgreSQL database; SQLite (one replica, no binding) needs a writable data/
# (mount an emptyDir at /app/data, or set MCP_NOTES_DB to a file in a mounted folder).
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8080
EXPOSE 8080
# uvicorn drains in-flight requests on SIGTERM (8 s) and exits 0: keep terminationGracePeriodSeconds above that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/venv/bin/python", "-m", "server"]
