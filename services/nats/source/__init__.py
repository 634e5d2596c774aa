"""nats-source: read a JetStream stream with a durable pull consumer, ack after the mesh stored the event."""
