"""The live path: the frame clock, the frame renderer, the pipeline that paces frames on the audio clock, and the
one function that wires a renderer (assemble.py)."""
