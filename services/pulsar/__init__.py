"""Apache Pulsar: pulsar-source and pulsar-sink, sharing the client in :mod:`services.pulsar.client`."""
