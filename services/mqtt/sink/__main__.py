from runtime import main_for
from services.mqtt.sink.connector import MqttSink

main_for(MqttSink)
