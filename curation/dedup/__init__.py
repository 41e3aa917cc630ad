"""Duplicate finding: perceptual hashes (and, in the dedup issue, exact groups and copy-detection graphs)."""
