from runtime.app import main_for
from services.postgres_sink.connector import PostgresSink

main_for(PostgresSink)
