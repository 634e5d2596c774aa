"""S3: s3-source and s3-sink, sharing the client and its error seam (client.py)."""
