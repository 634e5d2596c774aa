from runtime import main_for
from services.chat.wechat.connector import WechatSink

main_for(WechatSink)
