from runtime import main_for
from services.file_source.connector import FileSource

main_for(FileSource)
