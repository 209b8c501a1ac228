"""``python -m genneg.data.motion {procedural,deepmimic} ...``: write a motion data set (:mod:`.dataset`)."""

from .dataset import main

raise SystemExit(main())
