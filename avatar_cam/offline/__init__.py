"""Offline work: rendering a photo and a sound file to an mp4, as fast as the machine allows."""
