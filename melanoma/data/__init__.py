"""Data: sources and public releases, decoding, the split and the five datasets."""
