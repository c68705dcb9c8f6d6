# The two commands of the README. Both install what they need first (idempotent, seconds when
# everything is present): a virtual environment in .venv with the pinned stack.
PY := .venv/bin/python

.PHONY: setup demo test
setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m pytest -q tests
