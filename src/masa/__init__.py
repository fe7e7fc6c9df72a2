"""masa."""
