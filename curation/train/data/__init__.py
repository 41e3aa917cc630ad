"""From a published version to multi-crop batches: verified shard stream, batch assembly, crops."""
