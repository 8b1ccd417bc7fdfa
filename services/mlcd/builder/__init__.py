"""The builder service: compiles pipelines when their code changes, publishes them, reports on GitLab."""
