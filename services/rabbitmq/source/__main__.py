from runtime import main_for
from services.rabbitmq.source.connector import RabbitmqSource

main_for(RabbitmqSource)
