from runtime import main_for
from services.kafka.sink.connector import KafkaSink

main_for(KafkaSink)
