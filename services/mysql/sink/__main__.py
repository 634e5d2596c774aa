from runtime.app import main_for
from services.mysql.sink.connector import MysqlSink

main_for(MysqlSink)
