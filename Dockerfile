# One image for every mlcd microservice: `mlcd serve <service>`, `mlcd db upgrade`, and the CLI.
# Build: docker build -t registry.example.com/ml/mlcd:0.1.0 .

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/mlcd
WORKDIR /src
COPY pyproject.toml ./
COPY services ./services
RUN /opt/mlcd/bin/pip install --upgrade pip \
 && /opt/mlcd/bin/pip install . -c services/constraints/main.txt
# Feast (pandas<3) and ML Metadata (protobuf<5) cannot share mlcd's environment: each gets a virtualenv of
# its own that mlcd runs as a child process (MLCD_FEAST_BIN, MLCD_MLMD_PYTHON), as `make` does locally.
RUN python -m venv /opt/feast && /opt/feast/bin/pip install -c services/constraints/feast.txt 'feast==0.67.*' \
 && python -m venv /opt/mlmd && /opt/mlmd/bin/pip install -c services/constraints/mlmd.txt 'ml-metadata==1.17.1'

FROM python:3.11-slim
ENV PATH=/opt/mlcd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/mlcd \
    MLCD_HOME=/var/lib/mlcd \
    MLCD_POLICIES_DIR=/etc/mlcd/policies \
    MLCD_PIPELINES_DIR=/app/pipelines \
    MLCD_HTTP_HOST=0.0.0.0 \
    MLCD_FEAST_BIN=/opt/feast/bin/feast \
    MLCD_MLMD_PYTHON=/opt/mlmd/bin/python
RUN groupadd --system --gid 10001 mlcd \
 && useradd --system --uid 10001 --gid mlcd --home-dir /var/lib/mlcd --shell /usr/sbin/nologin mlcd \
 && install -d -o mlcd -g mlcd /var/lib/mlcd
COPY --from=build /opt/mlcd /opt/mlcd
COPY --from=build /opt/feast /opt/feast
COPY --from=build /opt/mlmd /opt/mlmd
# Pipeline sources (compiled by the builder) and the default policies (the Helm chart mounts its own over
# them). Policy paths such as pipelines/<name>/expectations.json resolve against the parent of
# MLCD_PIPELINES_DIR, /app; tests/integration/test_image_layout.py lays this stage out and checks it.
COPY pipelines /app/pipelines
COPY policies /etc/mlcd/policies
WORKDIR /app
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["mlcd"]
CMD ["--help"]
