from runtime.app import main_for
from services.rabbitmq_source.connector import RabbitmqSource

main_for(RabbitmqSource)
