from runtime import main_for
from services.kafka.source.connector import KafkaSource

main_for(KafkaSource)
