"""mqtt-source: subscribe to MQTT topics at QoS 1, ack after the mesh stored the message."""
