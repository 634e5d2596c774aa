from runtime import main_for
from services.redis.sink.connector import RedisSink

main_for(RedisSink)
