"""Running the services: server, writer, and `up` which supervises both."""
