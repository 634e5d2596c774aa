"""mqtt-sink: publish events to MQTT at QoS 1."""
