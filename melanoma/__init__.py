"""melanoma-synth: a DVC pipeline for melanoma classification with synthetic-data augmentation."""
