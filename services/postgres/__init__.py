"""PostgreSQL: postgres-source and postgres-sink, sharing the client in :mod:`services.postgres.client`."""
