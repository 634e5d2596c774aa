"""redis-source: read Redis Streams (consumer group) or Pub/Sub channels."""
