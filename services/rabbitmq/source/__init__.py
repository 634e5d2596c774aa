"""rabbitmq-source: consume a RabbitMQ queue, ack after the mesh stored the event."""
