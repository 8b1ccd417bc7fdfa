"""The notifier service: outcome events turned into messages on the channels a model's policy names."""
