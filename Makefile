# The README's two commands are `make demo` and `make test`; both prepare .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo deps test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/meshconnect demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check --no-cache runtime services tests bench
	$(BIN)/ruff format --no-cache --check runtime

typecheck: $(STAMP)
	$(BIN)/mypy runtime

unit: $(STAMP) deps
	$(BIN)/pytest $(PYTEST_ARGS)

# The Debian packages the tests run and the RabbitMQ broker they use (.ci/deps): installed and started
# as root with apt, else a failure that prints the command to run. Without them tests would skip.
deps:
	.ci/deps

test: lint typecheck unit

bench: $(STAMP)
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
