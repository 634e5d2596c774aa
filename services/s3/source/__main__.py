from runtime import main_for
from services.s3.source.connector import S3Source

main_for(S3Source)
