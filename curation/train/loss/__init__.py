"""One objective per module: DINO (CLS), iBOT (masked patches), KoLeo (spread), Gram anchoring (patch geometry)."""
