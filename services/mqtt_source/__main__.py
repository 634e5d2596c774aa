from runtime.app import main_for
from services.mqtt_source.connector import MqttSource

main_for(MqttSource)
