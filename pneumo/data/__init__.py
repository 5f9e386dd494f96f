"""Data steps: ingest (manifest), validate (GX contract), split, preprocess."""
