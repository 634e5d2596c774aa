from runtime.app import main_for
from services.mysql_source.connector import MysqlSource

main_for(MysqlSource)
