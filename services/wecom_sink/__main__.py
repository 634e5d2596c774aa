from runtime import main_for
from services.wecom_sink.connector import WecomSink

main_for(WecomSink)
