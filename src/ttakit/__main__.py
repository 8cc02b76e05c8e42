"""``python -m ttakit`` (also what ``torchrun -m ttakit`` runs)."""

from .cli import main

raise SystemExit(main())
