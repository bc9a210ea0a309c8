# model-router's image, in two stages.
#   builder: the repository's package and every dependency as wheels (pip wheel; a dependency
#            without a wheel for this platform would be compiled here, never in the image).
#   final:   python:3.11-slim with those wheels installed from the builder's folder alone (no
#            index, no compiler, no wheel files left in a layer), run as an unprivileged user
#            with a fixed uid and gid, 10001, which config/k8s/deployment.yaml's
#            securityContext names (runAsUser, runAsGroup, fsGroup).
# The config is mounted at /etc/model-router (the ConfigMap); the prediction log and state go
# under /var/lib/model-router (a volume). The root filesystem can be mounted read-only: the
# router writes only there and in the temporary folder (/tmp, give it a volume too).
#   docker build -t model-router:0.1.0 .
#   docker run -p 127.0.0.1:8080:8080 -v "$PWD/config:/etc/model-router:ro" model-router:0.1.0
# PYTHON_IMAGE names the base for both stages (a mirror or a pinned digest of the same image).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY router ./router
RUN python -m pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 model-router \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin model-router \
    && mkdir -p /etc/model-router /var/lib/model-router \
    && chown 10001:10001 /var/lib/model-router
# Bound, not copied: the wheels never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links /wheels model-router
# Compiled at install; at run time the root filesystem may be read-only.
ENV PYTHONDONTWRITEBYTECODE=1
WORKDIR /var/lib/model-router
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["model-router"]
CMD ["serve", "-c", "/etc/model-router/router.yaml"]
