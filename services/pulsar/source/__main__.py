from runtime import main_for
from services.pulsar.source.connector import PulsarSource

main_for(PulsarSource)
