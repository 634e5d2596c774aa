from runtime import main_for
from services.redis.source.connector import RedisSource

main_for(RedisSource)
