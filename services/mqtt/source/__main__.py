from runtime import main_for
from services.mqtt.source.connector import MqttSource

main_for(MqttSource)
