"""Ingest: GitLab, MinIO, Alertmanager and MLflow deliveries become events, nothing lost, nothing doubled."""
