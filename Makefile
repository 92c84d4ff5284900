PY ?= .venv/bin/python

.PHONY: test slow faults fuzz bench

test:  ## the default suite (fault injection excluded; fuzz replay included), in 3 workers
	$(PY) -m pytest -n $${LEPTON_TEST_WORKERS:-3}

slow:  ## long scenario tests (federation rounds, repeated SIGKILLs, a tuning study)
	$(PY) -m pytest -m slow

faults:  ## fault-injection and load suite (tests/faults)
	$(PY) -m pytest -m faults tests/faults

fuzz:  ## hypothesis fuzzers with more examples, replaying the committed corpus first
	LEPTON_FUZZ_EXAMPLES=5000 $(PY) -m pytest tests/fuzz -q

bench:  ## every service benchmark (prints markdown rows)
	for script in bench/*_bench.py; do $(PY) $$script || exit 1; done
