from runtime import main_for
from services.dingtalk_sink.connector import DingtalkSink

main_for(DingtalkSink)
