from runtime.app import main_for
from services.http_sink.connector import HttpSink

main_for(HttpSink)
