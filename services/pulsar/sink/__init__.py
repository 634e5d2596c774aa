"""pulsar-sink: publish events to Pulsar topics, return once the broker persisted them."""
