"""nats-sink: publish events to JetStream with acks and Nats-Msg-Id dedup."""
