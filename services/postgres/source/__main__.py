from runtime import main_for
from services.postgres.source.connector import PostgresSource

main_for(PostgresSource)
