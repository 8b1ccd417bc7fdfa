"""The Bus port, its adapters (Kafka, in-process) and the consumer runtime."""
