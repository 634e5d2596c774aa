from runtime import main_for
from services.mysql.source.connector import MysqlSource

main_for(MysqlSource)
