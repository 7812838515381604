"""The daemon: the controller (commands and state), its status, the control socket and the one-per-user lock."""
