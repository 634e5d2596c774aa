from runtime import main_for
from services.chat.slack.connector import SlackSink

main_for(SlackSink)
