"""iclora's data library: ingest, validate, dedup, compose, caption and publish IC-LoRA image sets."""

__version__ = "0.1.0"
