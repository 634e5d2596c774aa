from runtime import main_for
from services.nats.source.connector import NatsSource

main_for(NatsSource)
