"""The deployer: canary rollouts with analysis between steps, promotion, and rollbacks."""
