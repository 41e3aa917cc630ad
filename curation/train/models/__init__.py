"""The backbone and the projection heads, built from config."""
