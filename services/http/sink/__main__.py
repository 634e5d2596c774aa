from runtime import main_for
from services.http.sink.connector import HttpSink

main_for(HttpSink)
