"""The Wav2Lip generator: its layers as data, the safe checkpoint reader, the OpenVINO graph and engine."""
