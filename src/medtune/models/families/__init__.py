"""Model families: declarative descriptions of what the fast path needs per architecture."""
