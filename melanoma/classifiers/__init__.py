"""Classifier families: `registry` (family name -> constructor, pretrained weights, GradCAM layers), `medvit`,
`train` (one grid cell through the engine), `inference` (a trained cell loaded to score images)."""
