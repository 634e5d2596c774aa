from runtime import main_for
from services.chat.dingtalk.connector import DingtalkSink

main_for(DingtalkSink)
