"""The store: the backing directory, drafts, rejected writes, the journal."""
