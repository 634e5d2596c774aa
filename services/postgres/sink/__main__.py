from runtime import main_for
from services.postgres.sink.connector import PostgresSink

main_for(PostgresSink)
