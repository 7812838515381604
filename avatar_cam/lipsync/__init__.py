"""Lip-sync engines: the contract, the registry (Wav2Lip, Lite), and the engines themselves."""
