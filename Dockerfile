# syntax=docker/dockerfile:1
# globaldns container image.
#   docker build -t globaldns .
#   docker run --rm -p 5353:53/udp -p 5353:53/tcp -v "$PWD/examples:/examples:ro" globaldns \
#     serve --service-entries /examples --upstream 1.1.1.1
# Two stages: the builder turns the project and its dependencies into wheels; the final stage installs
# those wheels (bind-mounted, so they are not copied into a layer) and keeps nothing else: no pip cache,
# no compiler, no tests, no source tree, no installer.
#
# The base is pinned to a patch release. For reproducible production builds pin the digest too:
#   docker build --build-arg PYTHON_IMAGE=python:3.11.17-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps everything else out of the context).
COPY pyproject.toml README.md ./
COPY globaldns ./globaldns
# globaldns itself with the grpc extra (--grpc) and every runtime dependency, as wheels (all have binary
# wheels for amd64 and arm64, so no compiler is needed).
RUN pip wheel --wheel-dir /wheels ".[grpc]"

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="globaldns" \
      org.opencontainers.image.description="CoreDNS-compatible DNS server for Istio multicluster .global names" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Binding port 53 as a non-root user: why a file capability on the interpreter.
#
# Capabilities granted to a container do not reach a non-root entrypoint by themselves. When the runtime
# (runc under containerd or CRI-O) starts the entrypoint as UID 65532, its own process does hold
# CAP_NET_BIND_SERVICE, if the pod adds it, in the bounding, permitted and effective sets; but execve()
# recomputes the sets of a non-root process from the executable's file capabilities and the ambient set. Kubernetes grants no ambient
# capabilities (there is no field for them), so `capabilities.add: [NET_BIND_SERVICE]` alone is lost at
# exec and bind(:53) fails with EACCES. With the file capability `cap_net_bind_service=+ep` on the
# interpreter that runs globaldns, exec gives the process CAP_NET_BIND_SERVICE again, limited by the
# bounding set, i.e. only when the pod adds NET_BIND_SERVICE. That also holds with
# `allowPrivilegeEscalation: false` (no_new_privs): no_new_privs only stops an exec from gaining
# capabilities the process did not already have, and the runtime's process had this one. This is the
# usual answer (the kube-apiserver image does the same with setcap). The sysctl
# net.ipv4.ip_unprivileged_port_start would do too, but not every cluster allows setting it.
# Consequences, shown by tests/test_deploy.py with the same kernel rules:
#   - the container must have NET_BIND_SERVICE in its bounding set: with `drop: [ALL]` and no
#     `add: [NET_BIND_SERVICE]` the kernel refuses to exec python at all ("operation not permitted");
#     `docker run` works as is (NET_BIND_SERVICE is in Docker's default set);
#   - older Docker Engines cleared the permitted set of non-root containers (moby#45491, fixed in 2023
#     in the 24.0 series), so there `--security-opt no-new-privileges` with a non-root user cannot bind
#     53. containerd and CRI-O, what Kubernetes runs on, keep it.
# The bytes below are what `setcap cap_net_bind_service=+ep` writes (struct vfs_cap_data, revision 2:
# magic 0x02000000 | effective flag 1, permitted bit 10 = CAP_NET_BIND_SERVICE); writing the attribute
# from Python spares installing libcap2-bin. tests/test_deploy.py compares it with setcap's output.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --disable-pip-version-check /wheels/*.whl \
 && pip uninstall --yes --no-cache-dir --disable-pip-version-check pip setuptools wheel \
 && python3 -c 'import os, sys; p = os.path.realpath(sys.executable); os.setxattr(p, "security.capability", bytes.fromhex("0100000200040000000000000000000000000000")); print(p, "cap_net_bind_service=ep")' \
 && groupadd --system --gid 65532 globaldns \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin globaldns \
 && globaldns --version \
 && python3 -c 'import globaldns.protocols.rpc'
# Numeric, so Kubernetes can check runAsNonRoot without reading /etc/passwd.
USER 65532:65532
# DNS on UDP and TCP, metrics, /health, /ready: CoreDNS's ports.
EXPOSE 53/udp 53/tcp 9153 8080 8181
ENTRYPOINT ["globaldns"]
CMD ["serve"]
