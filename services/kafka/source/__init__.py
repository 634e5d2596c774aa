"""kafka-source: read Kafka partitions as partition groups, offsets checkpointed in the registry under leases."""
