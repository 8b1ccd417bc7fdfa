"""One module per outside system; each implements one port and imports its SDK lazily."""
