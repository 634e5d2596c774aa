"""s3-source: read the objects under a bucket/prefix in key order, one event per JSON line or per object."""
