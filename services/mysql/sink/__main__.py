from runtime import main_for
from services.mysql.sink.connector import MysqlSink

main_for(MysqlSink)
