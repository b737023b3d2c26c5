"""The lake: Apache Iceberg tables `events` and `quarantine` written through pyiceberg."""
