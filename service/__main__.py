"""``python -m service`` = the ``moldwatch`` console script."""
from service.cli import app

app()
