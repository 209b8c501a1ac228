"""``python -m genneg.data.traffic --cache-dir DIR``: fetch the CARLA towns (see :mod:`.carla`)."""

from .carla import main

raise SystemExit(main())
