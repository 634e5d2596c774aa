"""pulsar-source: read Pulsar topics with a durable subscription, ack after the mesh stored the event."""
