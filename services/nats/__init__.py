"""NATS JetStream: nats-source and nats-sink, sharing the client in :mod:`services.nats.client`."""
