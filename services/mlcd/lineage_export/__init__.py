"""The lineage exporter service: the chain written to OpenLineage and ML Metadata."""
