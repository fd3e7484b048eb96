"""Models as products: packages, predict, the Hub."""
