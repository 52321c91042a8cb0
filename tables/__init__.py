"""Tables: the ClickHouse schema the pipeline owns, and its migrations."""
