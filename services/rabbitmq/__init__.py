"""RabbitMQ: rabbitmq-source and rabbitmq-sink, sharing the client in :mod:`services.rabbitmq.client`."""
