from runtime import main_for
from services.nats.sink.connector import NatsSink

main_for(NatsSink)
