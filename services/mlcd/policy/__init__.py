"""Policies: YAML files → validated models → CEL rules → decisions. No I/O beyond reading the files."""
