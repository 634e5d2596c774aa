from runtime import main_for
from services.slack_sink.connector import SlackSink

main_for(SlackSink)
