from runtime import main_for
from services.pulsar.sink.connector import PulsarSink

main_for(PulsarSink)
