"""Audio: the 16 kHz ring that is the master clock, its sources (microphone, file), PortAudio's devices, Wav2Lip's
mel features and the voice gate."""
