"""acmebox: an ACME sidecar that keeps a Docker registry's nginx supplied with certificates."""

__version__ = "0.1.0"
