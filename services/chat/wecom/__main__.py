from runtime import main_for
from services.chat.wecom.connector import WecomSink

main_for(WecomSink)
