"""The gatekeeper service: promotion policies, gates and on-call decisions, monitoring actions."""
