"""Background work: how reply tasks are queued, locked and run."""
