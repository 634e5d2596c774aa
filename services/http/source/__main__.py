from runtime import main_for
from services.http.source.connector import HttpSource

main_for(HttpSource)
