from runtime.app import main_for
from services.postgres_source.connector import PostgresSource

main_for(PostgresSource)
