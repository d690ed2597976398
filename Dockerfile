# syntax=docker/dockerfile:1
# stepguard image: `stepguard serve` as uid 10001, policies in /etc/stepguard/policies.
#   docker build -t stepguard:0.1.0 .
# See docs/deployment.md.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a wheel of stepguard and of every dependency, installed into a venv
# (with the fleet extra: the chart runs `stepguard ship` and `stepguard collect`
# from this image too; the sidecar itself never imports them)
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# requirements.lock pins the transitive dependencies when the repository has one;
# the trailing * keeps the build working without it.
COPY pyproject.toml README.md* requirements.lock* ./
COPY sidecar ./sidecar
RUN set -eu; \
    constraints=""; \
    if [ -f requirements.lock ]; then constraints="--constraint requirements.lock"; fi; \
    python -m pip wheel --wheel-dir /wheels $constraints ".[fleet]" ; \
    python -m venv /opt/stepguard; \
    /opt/stepguard/bin/pip install --no-index --find-links /wheels "stepguard[fleet]"; \
    /opt/stepguard/bin/pip uninstall --yes pip; \
    /opt/stepguard/bin/stepguard --help >/dev/null

# ---- runtime: the venv, the policies, no compilers and no pip
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/stepguard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
 && groupadd --system --gid 10001 stepguard \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin stepguard \
 && mkdir -p /run/stepguard /var/lib/stepguard/audit \
 && chown 10001:10001 /run/stepguard /var/lib/stepguard/audit
COPY --from=build /opt/stepguard /opt/stepguard
COPY policies/ /etc/stepguard/policies/
USER 10001:10001
WORKDIR /var/lib/stepguard
# 50051: gRPC; 9464: Prometheus metrics.
EXPOSE 50051 9464
ENTRYPOINT ["stepguard", "serve"]
CMD ["--policies", "/etc/stepguard/policies", "--listen", "0.0.0.0:50051", "--socket", "/run/stepguard/grpc.sock", "--metrics-listen", "0.0.0.0:9464"]
