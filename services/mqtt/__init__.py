"""MQTT: mqtt-source and mqtt-sink, sharing the client in :mod:`services.mqtt.client`."""
