"""Per-class image generators: `dcgan` and `ddpm` (the models), `data` (their train-split images), `train`
(training through the engine), `loaded` (sampling a trained one), `synthesize`, `upscale`, `quality`."""
