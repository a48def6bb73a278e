# The two commands a newcomer needs are documented in README.md.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: venv packages sandbox sandbox-down lint test unit integration e2e e2e-kernel image image-test fuzz example bench bench-agent clean

$(PY):
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'

venv: $(PY)

# A venv from before a new console script (kilo-sandbox) gets it on the next make.
$(BIN)/kilo-sandbox: pyproject.toml | $(PY)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The Debian packages the sandbox needs, those that are missing (root, apt-get, listed before
# they are installed); with `--kernel` in SANDBOX_ARGS also QEMU's. `make packages
# PACKAGE_SETS=test` installs what every test needs (scripts/debian-packages.sh).
PACKAGE_SETS ?= sandbox $(if $(findstring --kernel,$(SANDBOX_ARGS)),kernel)
packages:
	bash scripts/debian-packages.sh $(PACKAGE_SETS)

# The first command of the README: what is missing, then a Kilo mesh across simulated clouds
# on this machine (root; `make sandbox SANDBOX_ARGS="--locations 3 --granularity full"`).
sandbox: packages $(BIN)/kilo-sandbox
	$(BIN)/kilo-sandbox up $(SANDBOX_ARGS)

sandbox-down: $(BIN)/kilo-sandbox
	$(BIN)/kilo-sandbox down

# Static gates: formatting, lint, types (strict on the package), the pure-core contract.
lint: $(PY)
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

# The test command CI runs (.ci/run): every gate, then every test suite, with the pure
# core's coverage floor (pyproject.toml: [tool.coverage]).
test: lint
	$(BIN)/pytest --cov=kilo.mesh

unit: $(PY)
	$(BIN)/pytest tests/unit

# End-to-end tests alone: network namespaces, real iptables (root).
e2e: $(PY)
	$(BIN)/pytest tests/e2e

# Kilo's default data plane (kernel WireGuard, IPIP, --mtu auto, flannel and cilium devices)
# in a virtual machine with Debian's kernel, which has the modules this host's lacks (root).
e2e-kernel: $(PY)
	$(BIN)/pytest tests/kernel

# Integration tests alone: a real etcd + kube-apiserver (built once, see README).
integration: $(PY)
	$(BIN)/pytest tests/integration

# The image without a container engine (root, mmdebstrap; cached under ~/.cache/kilo-image),
# imported into podman as $(IMAGE_NAME).
IMAGE_NAME ?= localhost/kilo-py/kilo:dev
image:
	bash docker/build.sh import $(IMAGE_NAME)

# The image tests alone: the built image run with podman (root).
image-test: $(PY)
	$(BIN)/pytest tests/image tests/e2e/test_image_agent.py

# The fuzz suite's long, random profile: Nodes and Peers of any shape through everything kg,
# kgctl and kg webhook compute (CI runs a short, fixed profile of the same tests).
# `make fuzz KILO_FUZZ_EXAMPLES=50000` explores more; failures are replayed from .hypothesis/.
KILO_FUZZ_EXAMPLES ?= 5000
fuzz: $(PY)
	KILO_FUZZ_EXAMPLES=$(KILO_FUZZ_EXAMPLES) $(BIN)/pytest -m fuzz -o timeout=0 tests/unit

# kgctl on an example cluster dump: no root, no namespaces.
example: $(PY)
	$(BIN)/kgctl --backend file --file examples/cluster.yaml graph
	$(BIN)/kgctl --backend file --file examples/cluster.yaml showconf node alpha
	$(BIN)/kgctl --backend file --file examples/cluster.yaml plan node beta

bench: $(PY)
	$(PY) -m benchmarks.topology_bench

# A reduced set for every change (no root, a few minutes): topology + plan at 1000 and 5000
# nodes, the leader's light apply per stage, every kgctl command on a 5000-node dump, and
# the CPU of one check-in in the agent
# (README, "Performance").
bench-quick: $(PY)
	$(PY) -m benchmarks.topology_bench --sizes 1000,5000 --repeat 5
	$(PY) -m benchmarks.apply_bench --sizes 1000,5000 --events 20 --cases alip --check-ins 30
	$(PY) -m benchmarks.kgctl_bench --nodes 5000 --repeat 1 --dumps bare
	$(PY) -m benchmarks.checkin_bench --repeat 2000

# kg on a leader in the e2e testbed (root, about 15 minutes): start-up, CPU and RSS with
# 100, 300 and 1000 nodes, annotation-change-to-WireGuard latency (`--quick`: a smoke run).
bench-agent: $(PY)
	$(PY) -m benchmarks.agent_bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
