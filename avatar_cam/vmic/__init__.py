""""Avatar Cam Microphone": the voice delayed to meet the lips, as a microphone call apps can pick."""
