"""kafka-sink: produce events to Kafka (idempotent, acks=all) in the CloudEvents binary or structured binding."""
