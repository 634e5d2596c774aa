"""postgres-sink: upsert events into PostgreSQL."""
