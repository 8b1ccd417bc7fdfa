# One image for every mlcd microservice: `mlcd serve <service>`, `mlcd db upgrade`, and the CLI.
# Build: docker build -t registry.example.com/ml/mlcd:0.1.0 .

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/mlcd
WORKDIR /src
COPY pyproject.toml ./
COPY services ./services
RUN /opt/mlcd/bin/pip install --upgrade pip \
 && /opt/mlcd/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/mlcd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/mlcd \
    MLCD_HOME=/var/lib/mlcd \
    MLCD_POLICIES_DIR=/etc/mlcd/policies \
    MLCD_PIPELINES_DIR=/app/pipelines \
    MLCD_HTTP_HOST=0.0.0.0
RUN groupadd --system --gid 10001 mlcd \
 && useradd --system --uid 10001 --gid mlcd --home-dir /var/lib/mlcd --shell /usr/sbin/nologin mlcd \
 && install -d -o mlcd -g mlcd /var/lib/mlcd
COPY --from=build /opt/mlcd /opt/mlcd
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
