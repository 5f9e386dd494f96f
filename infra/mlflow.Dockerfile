# The MLflow server of infra/docker-compose.yml: the official image plus the PostgreSQL driver and
# the S3 client that --backend-store-uri postgresql+psycopg2:// and --artifacts-destination s3:// need.
ARG MLFLOW_VERSION=3.17.2
FROM ghcr.io/mlflow/mlflow:v${MLFLOW_VERSION}
RUN pip install --no-cache-dir psycopg2-binary==2.9.13 boto3
