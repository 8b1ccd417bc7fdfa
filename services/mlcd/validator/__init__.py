"""The validator service: checks each arriving data batch against its model's expectation suite."""
