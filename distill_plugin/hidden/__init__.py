"""Hidden-state KD plumbing: layer maps, the decoder-layer hooks that capture rows, the projectors.
The loss itself is ``losses.hidden``."""
