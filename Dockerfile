# spotrain's two images, from one build context:
#
#   docker build --target operator -t spotrain-operator .
#       spotrain-operator (the entrypoint) and spotrain-agent: pip extra `operator` (kopf, kubernetes,
#       prometheus-client, boto3), no torch.
#   docker build --target trainer -t spotrain-trainer [--build-arg TORCH_INDEX_URL=...] .
#       spotrain-launch (the entrypoint; it execs torchrun, so torchrun is PID 1 and receives SIGTERM):
#       pip extra `trainer` (torch, boto3, prometheus-client), no kopf. The container's args are the training
#       script and its arguments. TORCH_INDEX_URL picks torch's wheel index, e.g.
#       https://download.pytorch.org/whl/cpu (CPU only, small) or https://download.pytorch.org/whl/cu128;
#       empty (the default) takes PyPI's wheel, which brings the CUDA libraries.
#
# Every Python dependency comes from uv.lock, hashes checked: requirements/*.txt are `make requirements`'s export
# of it (tests/unit/test_lockfile.py checks they match), pip installs them with --require-hashes (which also
# refuses any requirement the file does not pin), then the spotrain wheel with its image's extra and --no-index,
# so every requirement of that extra must already be met (nothing more is downloaded), then `pip check`. The one
# exception is a TORCH_INDEX_URL build (see trainer-venv).
#
# pip runs in the build stages only, from outside the virtual environments it fills (`pip --python`): the
# final images hold a venv without pip, no wheel, no pip cache and no compiler or other build tool, and both
# run as the unprivileged user 65532.

# The base image, pinned by digest: the multi-platform index of python:3.11-slim (Python 3.11.16 on Debian trixie,
# pushed 2026-08-16), the digest other public projects pin for that tag, pulled also as
# public.ecr.aws/docker/library/python:3.11-slim@sha256:... . No registry is reachable from where this file is
# written and tested, so the digest could not be resolved here. To move to a newer image, resolve the tag's
# current index digest and replace the one below:
#   docker buildx imagetools inspect python:3.11-slim        (the "Digest:" line)
# The OCI label org.opencontainers.image.base.name records it (tests/unit/test_packaging.py checks both).
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# -- the spotrain wheel (pure Python: spotrain_operator, spotrain_trainer and spotrain_protocol) ------------
FROM python-base AS wheel
WORKDIR /src
COPY pyproject.toml ./
COPY operator/ operator/
COPY trainer/ trainer/
COPY protocol/ protocol/
# The build backend (pyproject's build-system, setuptools, which uv.lock does not lock) is fetched into pip's
# isolated build environment; only the pure-Python wheel it writes leaves this stage.
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

# -- one virtual environment per image; pip stays outside them (pip --python installs into the venv) --------
FROM python-base AS operator-venv
COPY requirements/operator.txt /requirements/
COPY --from=wheel /wheels /wheels
RUN python -m venv --without-pip /opt/venv \
 && python -m pip --python /opt/venv/bin/python install --require-hashes -r /requirements/operator.txt \
 && python -m pip --python /opt/venv/bin/python install --no-index "$(ls /wheels/spotrain-*.whl)[operator]" \
 && python -m pip --python /opt/venv/bin/python check

FROM python-base AS trainer-venv
# Where torch comes from; TORCH_SPEC must stay the trainer extra's torch requirement in pyproject.toml
# (tests/unit/test_packaging.py checks that it does; pass e.g. TORCH_SPEC=torch==2.10.* for one build of the
# supported range). With TORCH_INDEX_URL set, torch and the packages only it
# needs (its CUDA libraries, triton, sympy, ...) come from that index, unhashed: its builds (+cpu, +cu128) are
# other files than the PyPI wheels whose hashes uv.lock holds, so no locked hash could match them. Everything
# else still comes from the lock with hashes checked (requirements/trainer-without-torch.txt, the trainer export
# with torch's dependency tree pruned); the --no-index install of the wheel then confirms that the torch it
# got satisfies the trainer extra.
ARG TORCH_INDEX_URL=""
ARG TORCH_SPEC="torch>=2.9,<3"
COPY requirements/trainer.txt requirements/trainer-without-torch.txt /requirements/
COPY --from=wheel /wheels /wheels
RUN python -m venv --without-pip /opt/venv \
 && locked=/requirements/trainer.txt \
 && if [ -n "$TORCH_INDEX_URL" ]; then \
      python -m pip --python /opt/venv/bin/python install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC" \
      && locked=/requirements/trainer-without-torch.txt; \
    fi \
 && python -m pip --python /opt/venv/bin/python install --require-hashes -r "$locked" \
 && python -m pip --python /opt/venv/bin/python install --no-index "$(ls /wheels/spotrain-*.whl)[trainer]" \
 && python -m pip --python /opt/venv/bin/python check

# -- what both final images share: the user, the environment ------------------------------------------------
FROM python-base AS runtime
RUN groupadd --system --gid 65532 spotrain \
 && useradd --system --uid 65532 --gid 65532 --home-dir /home/spotrain --create-home \
      --shell /usr/sbin/nologin spotrain
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/spotrain
# OCI annotations of a release build: `--build-arg VERSION=$(version) --build-arg REVISION=$(git rev-parse HEAD)`.
# VERSION defaults to pyproject.toml's version (tests/unit/test_shipping_release.py checks that it does).
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG PYTHON_IMAGE
LABEL org.opencontainers.image.title="spotrain" \
      org.opencontainers.image.description="Elastic PyTorch training on spot node pools" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/spotrain/spotrain" \
      org.opencontainers.image.url="https://github.com/spotrain/spotrain" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# -- the trainer image --------------------------------------------------------------------------------------
FROM runtime AS trainer
COPY --from=trainer-venv /opt/venv /opt/venv
RUN install -d -o 65532 -g 65532 /workspace
WORKDIR /workspace
USER 65532:65532
ENTRYPOINT ["spotrain-launch"]

# -- the operator image (also runs spotrain-agent); last, so a plain `docker build .` builds it -------------
FROM runtime AS operator
COPY --from=operator-venv /opt/venv /opt/venv
WORKDIR /home/spotrain
USER 65532:65532
ENTRYPOINT ["spotrain-operator"]
