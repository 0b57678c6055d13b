# Two commands for a new machine: `make demo` (the main job, end to end) and `make test`.
# Both install what they need: Debian packages with apt (as root, or through sudo), Python
# packages into a virtual environment in .venv.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test deps venv bench bench-push bench-scale clean
.PHONY: bench-wan

deps:
	@if ! command -v docker-registry >/dev/null || ! command -v skopeo >/dev/null || \
	    ! command -v podman >/dev/null; then \
	  echo "installing docker-registry, skopeo and podman with apt"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq docker-registry skopeo podman >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: deps venv
	$(PY) examples/demo.py

test: deps venv
	$(PY) -m pytest -q

bench: deps venv
	@command -v /usr/bin/time >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq time >/dev/null; }
	$(PY) -m compileall -q mirror >/dev/null   # bytecode as an install has it: PYTHONDONTWRITEBYTECODE=1 here
	$(PY) benchmarks/bench_sync.py --out docs/benchmarks.md

bench-push: deps venv
	@command -v /usr/bin/time >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq time >/dev/null; }
	$(PY) -m compileall -q mirror >/dev/null   # bytecode as an install has it: PYTHONDONTWRITEBYTECODE=1 here
	$(PY) benchmarks/bench_push.py --out docs/benchmarks.md

bench-scale: deps venv
	@command -v /usr/bin/time >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq time >/dev/null; }
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m compileall -q mirror >/dev/null   # bytecode as an install has it: PYTHONDONTWRITEBYTECODE=1 here
	$(PY) benchmarks/bench_scale.py --out docs/benchmarks.md

# make bench-wan BEFORE=REV: also the code of git revision REV, measured in the same run
bench-wan: deps venv
	@command -v /usr/bin/time >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq time >/dev/null; }
	$(PY) -m compileall -q mirror >/dev/null   # bytecode as an install has it: PYTHONDONTWRITEBYTECODE=1 here
	$(PY) benchmarks/bench_wan.py --out docs/benchmarks.md $(if $(BEFORE),--before-rev $(BEFORE))

clean:
	rm -rf $(VENV) .demo bundles build *.egg-info
