"""``pixart-ms demo`` and the tiny random PixArt-Sigma models it (and the tests) build with diffusers."""
