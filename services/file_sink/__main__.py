from runtime import main_for
from services.file_sink.connector import FileSink

main_for(FileSink)
