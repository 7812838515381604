"""The tray icon: backends, menu, the app, and "Start at login"."""
