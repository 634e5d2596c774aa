from runtime import main_for
from services.chat.lark.connector import LarkSink

main_for(LarkSink)
