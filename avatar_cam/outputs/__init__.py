"""Where frames go: the virtual camera, the preview window, the mp4 recorder."""
