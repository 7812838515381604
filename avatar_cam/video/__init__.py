"""The picture: the portrait and its face, where eyes and mouth are, the compositor, and idle life."""
