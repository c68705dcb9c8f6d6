# The two commands of the README. Both install what they need first (idempotent, seconds when
# everything is present): a virtual environment in .venv with the pinned stack.
PY := .venv/bin/python

.PHONY: setup demo test
setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

# One pytest worker per core (ECC_TEST_WORKERS overrides), one thread each: two torch processes
# with two threads each on two cores run far slower than one thread each. Whole test files stay
# on one worker, so their module fixtures are built once. -rs names every skip; the 15 slowest
# tests are listed at the end.
test: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -n $${ECC_TEST_WORKERS:-auto} \
		--dist loadfile -rs --durations=15 tests
