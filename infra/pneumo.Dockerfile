# The Prefect worker of infra/docker-compose.yml: pneumo's pinned stack, built from the repository
# root (`docker compose` does this). The checkout mounted at /workspace comes first on PYTHONPATH,
# so flows run the code of that checkout; the installed copy provides the `pneumo` command.
FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends git make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/pneumo
COPY pyproject.toml README.md ./
COPY pneumo ./pneumo
COPY flows ./flows
COPY serving ./serving
RUN pip install --no-cache-dir . "dvc[s3]==3.67.1"
ENV PYTHONPATH=/workspace \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    DVC_NO_ANALYTICS=1
WORKDIR /workspace
