from runtime.app import main_for
from services.redis_sink.connector import RedisSink

main_for(RedisSink)
