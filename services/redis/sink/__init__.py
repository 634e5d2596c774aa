"""redis-sink: XADD events to Redis Streams or PUBLISH them."""
