"""SQL models: one SELECT per `name.sql` file built into a lake table (project, build, runs, scheduler); data checks
beside them (checks)."""
