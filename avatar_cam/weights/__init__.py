"""The model weights on the user's machine: the manifest, what is installed, and the resumable download."""
