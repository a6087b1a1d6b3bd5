# The two commands a new user needs: `make serve` and `make test`. Both set up .venv/ first (idempotent).
.PHONY: setup serve test lint unit

setup:
	@bash scripts/setup.sh

serve: setup
	.venv/bin/servefleet up

test: setup
	.venv/bin/python -m pytest

unit: setup
	.venv/bin/python -m pytest tests/unit

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
