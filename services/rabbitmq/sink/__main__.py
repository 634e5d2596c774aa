from runtime import main_for
from services.rabbitmq.sink.connector import RabbitmqSink

main_for(RabbitmqSink)
