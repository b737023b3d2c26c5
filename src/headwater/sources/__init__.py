"""Sources beyond HTTP: Kafka topics, RabbitMQ queues and file drops, decoded and appended to the log.

A source = a reader (one module per kind: `kafka`, `rabbitmq`, `files`) + a format (`formats`,
`cobol`, `grib`) + a target (events, a stream, or a table of its own through `lander`), driven by
`runner.SourceRunner`. The commit order is in `runner`'s docstring.
"""
