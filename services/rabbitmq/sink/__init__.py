"""rabbitmq-sink: publish events to RabbitMQ with publisher confirms."""
