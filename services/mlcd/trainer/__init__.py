"""The trainer service: training runs on Kubeflow Pipelines (or kfp.local), one active run per model."""
