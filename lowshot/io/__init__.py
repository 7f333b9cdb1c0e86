"""Readers and writers of the harness's file formats (one module per format)."""
