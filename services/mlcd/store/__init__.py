"""State store: tables, the unit of work, repositories and Alembic migrations."""
