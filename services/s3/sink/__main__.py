from runtime import main_for
from services.s3.sink.connector import S3Sink

main_for(S3Sink)
