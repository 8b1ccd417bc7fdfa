"""mlcd: event-driven CI/CD automation for machine-learning teams."""

__version__ = "0.1.0"
