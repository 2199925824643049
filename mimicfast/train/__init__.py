"""Training of the bundled Fashion-MNIST models (``mimicfast train``); the runtime never imports it."""
