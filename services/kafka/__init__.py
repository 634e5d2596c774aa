"""Apache Kafka: kafka-source and kafka-sink, sharing the client in :mod:`services.kafka.client` and the CloudEvents binding."""
