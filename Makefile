# One command sets up and runs the main job (`make demo`); one sets up and runs the tests (`make test`).
PY ?= python3
PIP ?= $(PY) -m pip
# everything the test suite exercises, DALI (~1 GB, runs its CPU operators without a GPU) included
EXTRAS ?= turbo,turbojpeg,s3,gcs,http,lmdb,gpu,test

.PHONY: setup demo test bench clean

.setup.stamp: pyproject.toml
	$(PIP) install -q "torch==2.13.0" || $(PIP) install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(PIP) install -q -e ".[$(EXTRAS)]"
	touch $@

setup: .setup.stamp

demo: setup
	shardpipe demo

test: setup
	$(PY) -m pytest -q -ra

bench: setup
	$(PY) tools/bench.py

clean:
	rm -rf .setup.stamp demo-data bench-data build *.egg-info
