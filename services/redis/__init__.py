"""Redis: redis-source and redis-sink, sharing the client in :mod:`services.redis.client`."""
