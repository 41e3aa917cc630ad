"""Building blocks of the backbone."""
