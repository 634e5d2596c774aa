from runtime import main_for
from services.lark_sink.connector import LarkSink

main_for(LarkSink)
