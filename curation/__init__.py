"""LVD-style image data curation: ingest pools, curate them, publish versioned WebDataset sets with provenance.

>>> import curation
>>> result = curation.run("pipelines/quickstart.yaml", home="./curation-home")  # doctest: +SKIP
>>> version = curation.open_version(result.version, home="./curation-home")      # doctest: +SKIP
>>> version.samples().num_rows                                                    # doctest: +SKIP
"""

__version__ = "0.1.0"

from curation.api import open_version, run  # noqa: E402

__all__ = ["__version__", "open_version", "run"]
