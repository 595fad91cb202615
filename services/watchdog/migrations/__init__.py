"""SQL migrations of the `watchdog` schema, applied in file-name order by `store.migrate()`."""
