import sys

from avatar_cam.cli import main

sys.exit(main())
